"""The tests marked `sanitize`: every kernel under Oclgrind (`make sanitize`; see conftest.py). A
package, so that its conftest does not take the place of tests/conftest.py as module `conftest`."""
