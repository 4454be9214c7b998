// Depthwise convolution with the folded batch norm's bias and the activation in its epilogue:
// one launch per layer, one thread per output element, f32 accumulation in every dtype.
// Compiled to PTX by kiln-models' build.rs (feature `cuda`) and loaded by candle's CUDA device.
//
// x [n, c, h, w], w [c, 1, k, k], bias [c], y [n, c, oh, ow], all contiguous. Padding is
// [top, left] (the bottom / right padding only shows in oh, ow). act: 0 none, 1 ReLU, 2 ReLU6.
#include <cuda_fp16.h>
#include <cuda_bf16.h>

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ void from_f(float v, float *o) { *o = v; }
__device__ __forceinline__ void from_f(float v, __half *o) { *o = __float2half_rn(v); }
__device__ __forceinline__ void from_f(float v, __nv_bfloat16 *o) { *o = __float2bfloat16_rn(v); }

template <typename T>
__device__ void depthwise(const T *__restrict__ x, const T *__restrict__ w,
                          const T *__restrict__ bias, T *__restrict__ y, unsigned n, unsigned c,
                          unsigned h, unsigned wd, unsigned oh, unsigned ow, unsigned k,
                          unsigned stride, unsigned pad_t, unsigned pad_l, unsigned act) {
    const size_t total = (size_t)n * c * oh * ow;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const unsigned ox = i % ow;
        const unsigned oy = (i / ow) % oh;
        const size_t plane = i / ((size_t)ow * oh); // n * c + channel
        const unsigned ch = plane % c;
        const T *xp = x + plane * h * wd;
        const T *wp = w + (size_t)ch * k * k;
        float acc = to_f(bias[ch]);
        const int iy0 = (int)(oy * stride) - (int)pad_t;
        const int ix0 = (int)(ox * stride) - (int)pad_l;
        for (unsigned ky = 0; ky < k; ++ky) {
            const int iy = iy0 + (int)ky;
            if (iy < 0 || iy >= (int)h) continue;
            for (unsigned kx = 0; kx < k; ++kx) {
                const int ix = ix0 + (int)kx;
                if (ix < 0 || ix >= (int)wd) continue;
                acc += to_f(xp[(size_t)iy * wd + ix]) * to_f(wp[ky * k + kx]);
            }
        }
        if (act == 1) acc = fmaxf(acc, 0.f);
        if (act == 2) acc = fminf(fmaxf(acc, 0.f), 6.f);
        from_f(acc, y + i);
    }
}

#define DEPTHWISE(NAME, T)                                                                    \
    extern "C" __global__ void NAME(const T *x, const T *w, const T *bias, T *y, unsigned n,    \
                                    unsigned c, unsigned h, unsigned wd, unsigned oh,           \
                                    unsigned ow, unsigned k, unsigned stride, unsigned pad_t,   \
                                    unsigned pad_l, unsigned act) {                             \
        depthwise<T>(x, w, bias, y, n, c, h, wd, oh, ow, k, stride, pad_t, pad_l, act);        \
    }

DEPTHWISE(kiln_depthwise_f32, float)
DEPTHWISE(kiln_depthwise_f16, __half)
DEPTHWISE(kiln_depthwise_bf16, __nv_bfloat16)
