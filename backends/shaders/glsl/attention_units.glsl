// Declarations shared by attention.comp and decode_attention_gqa.comp (included after common.glsl
// and the layout): push constants and bindings (as the generated kernel_attention.glsl and
// kernel_decode_attention.glsl), the K/V units and, with DECODE_ROPE_KV, the new row's rope and
// packing. The including file declares nothing these use.
#ifndef ATTENTION_UNITS_GLSL
#define ATTENTION_UNITS_GLSL

#ifndef DECODE_ROPE_KV
#define DECODE_ROPE_KV 0
#endif

layout(push_constant) uniform Params {
    uint rows;
    uint n_heads;
    uint n_kv_heads;
    uint head_dim;
    uint q_stride;  // decode_attention: the qkv row's stride
    uint block_size;
    uint blocks_per_seq;
    uint n_blocks;
    uint n_seqs;
    float scale;
} p;

#if defined(CACHE_DTYPE_F16)
#if VEC
#define UNIT uvec4
#define UE_N 8
#else
#define UNIT uint
#define UE_N 2
#endif
#else
#if VEC
#define UNIT vec4
#define UE_N 4
#else
#define UNIT vec2
#define UE_N 2
#endif
#endif

#define UE uint(UE_N)  // elements per unit

#if DECODE_ROPE_KV
// q, then k, then v of each row: qkv (read only, as are positions and inv_freq)
layout(std430, set = 0, binding = BINDING_QKV) readonly buffer Buffer_QKV { float q[]; };
layout(std430, set = 0, binding = BINDING_INV_FREQ) readonly buffer Buffer_INV_FREQ { float inv_freq[]; };
layout(std430, set = 0, binding = BINDING_K_CACHE) buffer Buffer_K_CACHE { UNIT k_cache[]; };
layout(std430, set = 0, binding = BINDING_V_CACHE) buffer Buffer_V_CACHE { UNIT v_cache[]; };
#else
layout(std430, set = 0, binding = BINDING_Q) readonly buffer Buffer_Q { float q[]; };
layout(std430, set = 0, binding = BINDING_K_CACHE) readonly buffer Buffer_K_CACHE { UNIT k_cache[]; };
layout(std430, set = 0, binding = BINDING_V_CACHE) readonly buffer Buffer_V_CACHE { UNIT v_cache[]; };
#endif
layout(std430, set = 0, binding = BINDING_POSITIONS) readonly buffer Buffer_POSITIONS { uint positions[]; };
layout(std430, set = 0, binding = BINDING_SEQS) readonly buffer Buffer_SEQS { uint seqs[]; };
layout(std430, set = 0, binding = BINDING_BLOCK_TABLES) readonly buffer Buffer_BLOCK_TABLES { uint block_tables[]; };
#include "paged.glsl"
#if DECODE_ROPE_KV
// coherent: the last slice of a head reads what the others wrote, past its own cache
layout(std430, set = 0, binding = BINDING_SCRATCH) coherent buffer Buffer_SCRATCH { uint scratch[]; };
#endif
layout(std430, set = 0, binding = BINDING_OUT) writeonly buffer Buffer_OUT { float out_[]; };

#define MAX_HEAD_DIM 256u
#define BATCH 8u   // K units loaded together per key
#define VBATCH 4u  // V rows loaded together per invocation
#define LOWEST -3.0e38  // below any score; a finite stand-in for -inf (see common.glsl)

#if DECODE_ROPE_KV
shared UNIT k_new[MAX_HEAD_DIM / UE];  // row p of this head's kv head, as the cache would hold it
shared UNIT v_new[MAX_HEAD_DIM / UE];
#endif

// a unit as 8 floats (.a = elements 0-3, .b = 4-7; only the first UE are meaningful)
struct Unit8 {
    vec4 a;
    vec4 b;
};

Unit8 expand(UNIT u) {
    Unit8 r;
#if defined(CACHE_DTYPE_F16) && VEC
    r.a = vec4(unpackHalf2x16(u.x), unpackHalf2x16(u.y));
    r.b = vec4(unpackHalf2x16(u.z), unpackHalf2x16(u.w));
#elif defined(CACHE_DTYPE_F16)
    r.a = vec4(unpackHalf2x16(u), 0.0, 0.0);
    r.b = vec4(0.0);
#elif VEC
    r.a = u;
    r.b = vec4(0.0);
#else
    r.a = vec4(u, 0.0, 0.0);
    r.b = vec4(0.0);
#endif
    return r;
}

#if DECODE_ROPE_KV
// element d of a head starting at q[base], rotated as the rope kernel does (rotate-half),
// cs = cos_sin of element d's angle
float rotated(uint base, uint d, uint half_dim, vec2 cs) {
    float x = q[base + d];
    if (d < half_dim) {
        return x * cs.x - q[base + d + half_dim] * cs.y;
    }
    return x * cs.x + q[base + d - half_dim] * cs.y;
}

// The new row goes to k_new / v_new and the caches a 4-byte word at a time (EPW elements,
// rounded as kv_write stores them), so that many invocations share the f16 rounding.
#if defined(CACHE_DTYPE_F16)
#define EPW 2u
#define WORD uint
#else
#define EPW 1u
#define WORD float
#endif
#if VEC
#define WPU_N 4  // words per unit
#elif defined(CACHE_DTYPE_F16)
#define WPU_N 1
#else
#define WPU_N 2
#endif
#define WPU uint(WPU_N)
#if WPU_N == 1
#define SET_WORD(units_, i, c, w) units_[i] = (w)
#else
#define SET_WORD(units_, i, c, w) units_[i][c] = (w)
#endif

// element d of the kv head starting at q[kb0], rotated as the rope kernel does
float rotated_k(uint kb0, uint d, uint half_dim, float fpos) {
    return rotated(kb0, d, half_dim, cos_sin(fpos * inv_freq[d < half_dim ? d : d - half_dim]));
}

// The new row's k (rotated; the kv head's k at q[kb0]) and v (at q[vb0]) into k_new / v_new a
// word per invocation (no barrier before the packing), and for the writer into the caches'
// units from `at` on
void pack_new_row(uint kb0, uint vb0, float fpos, bool writer, uint at) {
    uint half_dim = p.head_dim / 2u;
    for (uint w = gl_LocalInvocationIndex; w < p.head_dim / EPW; w += WG_SIZE) {
        uint d = w * EPW;
#if defined(CACHE_DTYPE_F16)
        WORD kw = pack_f16x2(rotated_k(kb0, d, half_dim, fpos), rotated_k(kb0, d + 1u, half_dim, fpos));
        WORD vw = pack_f16x2(q[vb0 + d], q[vb0 + d + 1u]);
#else
        WORD kw = rotated_k(kb0, d, half_dim, fpos);
        WORD vw = q[vb0 + d];
#endif
        uint i = w / WPU;
        uint c = w % WPU;
        SET_WORD(k_new, i, c, kw);
        SET_WORD(v_new, i, c, vw);
        if (writer) {
            SET_WORD(k_cache, at + i, c, kw);
            SET_WORD(v_cache, at + i, c, vw);
        }
    }
}

// unit i of key/value row j of this head's kv head (cache element `at`): the new row, j ==
// fresh, from shared memory
#define K_UNIT(j, at, i) ((j) == fresh ? k_new[i] : k_cache[at])
#define V_UNIT(j, at, i) ((j) == fresh ? v_new[i] : v_cache[at])
#else
#define K_UNIT(j, at, i) k_cache[at]
#define V_UNIT(j, at, i) v_cache[at]
#endif

// a[base + g * stride] summed over g < G in four independent chains, so the shared loads overlap
// instead of each waiting for the add before it (~1 us of a decode step, measured); instantiated
// after the shared declarations
#define SUM_GROUPS(name, a)                                              \
    float name(uint base, uint stride, uint G) {                         \
        vec4 s4 = vec4(0.0);                                             \
        uint g = 0u;                                                     \
        for (; g + 4u <= G; g += 4u) {                                   \
            s4 += vec4(a[base + g * stride], a[base + (g + 1u) * stride], \
                       a[base + (g + 2u) * stride], a[base + (g + 3u) * stride]); \
        }                                                                \
        for (; g < G; ++g) {                                             \
            s4.x += a[base + g * stride];                                \
        }                                                                \
        return (s4.x + s4.y) + (s4.z + s4.w);                            \
    }

#endif  // ATTENTION_UNITS_GLSL
