// Shared helpers of every shaderbay kernel (included by the generated kernel_<name>.glsl).
// Conventions: see shaderbay/backends/shaders/variants.py.
#ifndef COMMON_GLSL
#define COMMON_GLSL

#ifndef SUBGROUPS
#define SUBGROUPS 0
#endif
#if SUBGROUPS
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#endif

#define WG_SIZE (WG_X * WG_Y * WG_Z)
// Neither subgroupElect() (use gl_SubgroupInvocationID == 0u) nor `precise` (ignored)
// survive wgpu's translator either.
// No infinite or NaN float constants anywhere (not even through uintBitsToFloat of a
// literal): wgpu's SPIR-V translator (naga) constant-folds them, rejects the module and
// aborts the process. Compare floats through order_key() where infinities matter.

// A uint whose unsigned order is the float order: -inf < ... < -0 == +0 < ... < +inf.
// NaN maps to the key of -inf. Exact integer compares, immune to denormal flushing.
uint order_key(float v) {
    uint b = floatBitsToUint(v);
    if ((b & 0x7FFFFFFFu) > 0x7F800000u) {
        b = 0xFF800000u;  // NaN counts as -inf
    }
    if (b == 0x80000000u) {
        b = 0u;  // -0 == +0
    }
    return (b & 0x80000000u) != 0u ? ~b : (b | 0x80000000u);
}

// --- 16-bit data packed two to a uint word (element i of the pair: i & 1) ------------------

float f16_at(uint word, uint i) {
    vec2 v = unpackHalf2x16(word);
    return (i & 1u) == 0u ? v.x : v.y;
}

float bf16_at(uint word, uint i) {
    return uintBitsToFloat((i & 1u) == 0u ? (word << 16) : (word & 0xFFFF0000u));
}

vec2 unpack_bf16x2(uint word) {
    return vec2(uintBitsToFloat(word << 16), uintBitsToFloat(word & 0xFFFF0000u));
}

// float32 -> float16 bits, rounded to nearest even exactly as NumPy does (packHalf2x16's
// rounding is implementation-defined, so do it in integers).
uint f32_to_f16_bits(float f) {
    uint x = floatBitsToUint(f);
    uint sign = (x >> 16) & 0x8000u;
    uint e = (x >> 23) & 0xFFu;
    uint m = x & 0x7FFFFFu;
    if (e == 0xFFu) {
        return sign | 0x7C00u | (m != 0u ? (0x200u | (m >> 13)) : 0u);
    }
    int E = int(e) - 112;  // rebias 127 -> 15
    if (E >= 31) {
        return sign | 0x7C00u;
    }
    if (E <= 0) {
        if (E < -10) {
            return sign;
        }
        uint M = m | 0x800000u;
        uint shift = uint(14 - E);
        uint h = M >> shift;
        uint rem = M & ((1u << shift) - 1u);
        uint halfway = 1u << (shift - 1u);
        if (rem > halfway || (rem == halfway && (h & 1u) != 0u)) {
            h += 1u;
        }
        return sign | h;
    }
    uint h = (uint(E) << 10) | (m >> 13);
    uint rem = m & 0x1FFFu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u) != 0u)) {
        h += 1u;  // a carry rolls into the exponent (and up to inf) correctly
    }
    return sign | h;
}

uint pack_f16x2(float a, float b) {
    return f32_to_f16_bits(a) | (f32_to_f16_bits(b) << 16);
}

// cos and sin of a float32 angle, reduced to [-pi, pi] first (Cody-Waite) so large positions keep
// their accuracy on GPUs with fast, short-range sin/cos. 2*pi in four parts, the first three of at
// most 4 significant bits: for |k| < 2^20 (angles to ~6.6e6) each k * part is exact without a fused
// multiply-add, and each subtraction is exact too (Sterbenz: its operands within 2x of each other).
// `precise`: the parts are not folded back into one rounded 2*pi. Rope's worst error at positions up
// to 2^22 (benches/RESULTS.md 2026-12-06): 8.7e-3 on an H100 and 3.1e-4 on lavapipe with 2*pi in
// three parts of 5 bits (inexact products past k = 2^19 unless fused), 4.9e-7 and 7.3e-7 so.
// (rope and decode_attention: the same rotation in both.)
vec2 cos_sin(float a) {
    float k = round(a * 0.15915494309189535);
    precise float r = a - k * 6.0;
    r = r - k * 0.28125;
    r = r - k * 0.001953125;
    r = r - k * -1.7817820413774e-05;
    return vec2(cos(r), sin(r));
}

#endif  // COMMON_GLSL
