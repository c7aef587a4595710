// tile.cl: the register tile of the packed GEMM (clconv.blas.packed.Tile), with the defaults of the
// files that compute with it or write its packed layouts (gemm_packed.cl, im2col_packed.cl,
// conv_grad_paths.cl's packing kernels).
// -D MR, -D NR  rows of A and columns of B a tile holds   -D VW  vector width of REAL (NR / VW vectors)

#ifndef MR
#define MR 6
#endif
#ifndef NR
#define NR 16
#endif
#ifndef VW
#define VW 8
#endif
