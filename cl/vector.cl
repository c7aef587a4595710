// vector.cl: names for vectors of VW lanes (the including file defines VW first), and the outputs
// of a row that a direct kernel computes as whole vectors. Shared by conv_depthwise.cl,
// conv_grouped.cl, conv_grad_paths.cl and the packed GEMM's files.

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define VREAL CAT(REAL, VW)
#define VACC CAT(ACC, VW)
#define VLOAD CAT(vload, VW)
#define VSTORE CAT(vstore, VW)
#define CONVERT_VACC CAT(convert_, VACC)
#define CONVERT_VREAL CAT(convert_, VREAL)

#if VW == 8
// The sum of a vector's lanes, pairwise (the reductions that keep VW independent sums: a sum of
// one accumulator is bound by the add's latency).
inline ACC lanes_sum(const VACC v) {
    return ((v.s0 + v.s1) + (v.s2 + v.s3)) + ((v.s4 + v.s5) + (v.s6 + v.s7));
}
#endif

// Interior outputs [OW_LO, OW_HI) of a direct kernel's row (conv_depthwise.cl, conv_grouped.cl):
// every input a vector of them loads is inside [0, IW) (the stride-2 load reads one element past
// the last one it uses).
#define OW_LO ((PW + SW - 1) / SW)
#define LAST_READ_OFFSET ((KW - 1) * DW + (SW == 2 ? 1 : 0) - PW)  // last input read = ow*SW + this
#define OW_HI_RAW ((IW - 1 - LAST_READ_OFFSET) >= 0 ? (IW - 1 - LAST_READ_OFFSET) / SW + 1 : 0)
#define OW_HI (OW_HI_RAW < OW_LO ? OW_LO : (OW_HI_RAW > OW ? OW : OW_HI_RAW))
