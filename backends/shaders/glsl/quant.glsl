// GGUF block formats (wdtype q8_0, q4_0, q4_1, q4_k, q6_k): reading their blocks in place.
// The meaning is the NumPy reference's (shaderbay/backends/numpy/quants.py: ggml's structs);
// the arithmetic follows it (scale times value, minus the minimum) but may fuse multiply-adds.
//
// The including shader binds the blocks as 32-bit words and defines QWORD(i), the i-th word;
// QLAST, the binding's last word (where a read past a run is clamped); and QVEC4(i), the i-th
// 16 bytes (a wide load where the binding is a uvec4 array). Blocks of
// 34, 18 and 210 bytes start at any even byte, so a run of words at an even offset is read as
// the words around it, joined by 16-bit halves where it starts mid-word (qword*). Blocks of
// 20 bytes (q4_1) start on a word, of 144 (q4_k) on 16 bytes (rows are whole blocks).
//
// Per format: QBLOCK values in QBYTES bytes; dequant4(rb, j) gives values j..j+3 (j % 4 == 0)
// of the row whose blocks start at byte rb; the matrix-vector kernel's units are 32 values
// each: unit_x4(u, i) is the index of the i-th of their 8 vec4s of x in the row,
// unit_xsums(xv) the sums of x over the unit's groups of one scale (once per unit, for every
// row), and unit_dot(rb, u, xv, xs) the dot product of unit u's weights with those vec4s.
//
// unit_dot never converts an integer to a float (a quarter-rate instruction on NVIDIA: it
// bounded the first version at ~0.4 TB/s): a small unsigned value u of n bits is placed in the
// top mantissa bits of 1.0, f = 1 + u / 2^n (a shift and a mask per value), so that
// sum(f x) = sum(x) + sum(u x) / 2^n and sum(u x) = 2^n (sum(f x) - sum(x)). int8 values are
// taken as u = q + 128 (their top bit flipped), q - 8 and q - 32 as u minus the offset.
#ifndef QUANT_GLSL
#define QUANT_GLSL

#if defined(WDTYPE_Q8_0)
#define QBLOCK 32u
#define QBYTES 34u
#elif defined(WDTYPE_Q4_0)
#define QBLOCK 32u
#define QBYTES 18u
#elif defined(WDTYPE_Q4_1)
#define QBLOCK 32u
#define QBYTES 20u
#elif defined(WDTYPE_Q4_K)
#define QBLOCK 256u
#define QBYTES 144u
#elif defined(WDTYPE_Q6_K)
#define QBLOCK 256u
#define QBYTES 210u
#endif
#define QUNIT 32u  // values per unit of the matrix-vector kernel
#ifndef QVEC4
#define QVEC4(i) uvec4(QWORD(4u * (i)), QWORD(4u * (i) + 1u), QWORD(4u * (i) + 2u), QWORD(4u * (i) + 3u))
#endif

// --- bytes -------------------------------------------------------------------------------

// words of bytes off.. (off even): where off is mid-word, each is the high half of one word and
// the low half of the next; the word past the run is read only then (a branch, not a select: a
// select would read it always, past the data at the end of a buffer)
uint qword(uint off) {
    uint i = off >> 2;
    uint qw = QWORD(i);
    if ((off & 2u) != 0u) {
        qw = (qw >> 16) | (QWORD(i + 1u) << 16);
    }
    return qw;
}

uvec2 qwords2(uint off) {
    uint i = off >> 2;
    uvec2 qw = uvec2(QWORD(i), QWORD(i + 1u));
    if ((off & 2u) != 0u) {
        qw = (qw >> 16) | (uvec2(qw.y, QWORD(i + 2u)) << 16);
    }
    return qw;
}

uvec4 qwords4(uint off) {
    uint i = off >> 2;
    uvec4 qw = uvec4(QWORD(i), QWORD(i + 1u), QWORD(i + 2u), QWORD(i + 3u));
    if ((off & 2u) != 0u) {
        qw = (qw >> 16) | (uvec4(qw.yzw, QWORD(i + 4u)) << 16);
    }
    return qw;
}

float qhalf(uint off) {  // the f16 at an even offset
    return unpackHalf2x16(QWORD(off >> 2) >> ((off & 2u) * 8u)).x;
}

vec4 lo_nibbles(uint qw) {  // the low 4 bits of each byte, as values
    return vec4(uvec4(qw, qw >> 8, qw >> 16, qw >> 24) & 15u);
}

vec4 hi_nibbles(uint qw) {
    return vec4(uvec4(qw >> 4, qw >> 12, qw >> 20, qw >> 28) & 15u);
}

// 1 + u / 16 of the low (lo4) and high (hi4) nibbles of the 4 bytes, 1 + u / 256 of the bytes
vec4 lo4(uint qw) {
    return uintBitsToFloat((uvec4(qw << 19, qw << 11, qw << 3, qw >> 5) & 0x00780000u) | 0x3F800000u);
}

vec4 hi4(uint qw) {
    return uintBitsToFloat((uvec4(qw << 15, qw << 7, qw >> 1, qw >> 9) & 0x00780000u) | 0x3F800000u);
}

vec4 u8x4(uint qw) {
    return uintBitsToFloat((uvec4(qw << 15, qw << 7, qw >> 1, qw >> 9) & 0x007F8000u) | 0x3F800000u);
}

float hsum(vec4 v) {
    return (v.x + v.y) + (v.z + v.w);
}

float byte_value(uint w, uint shift) {  // the byte at `shift` as a float: placed under 2^23's exponent
    return uintBitsToFloat(0x4B000000u | ((w >> shift) & 255u)) - 8388608.0;
}

// --- formats -----------------------------------------------------------------------------

#if defined(WDTYPE_Q8_0)
// block: f16 d, 32 int8; value = q * d

uint unit_x4(uint u, uint i) {
    return 8u * u + i;
}

vec4 unit_xsums(vec4 xv[8]) {
    return vec4(hsum(xv[0] + xv[1] + xv[2] + xv[3] + xv[4] + xv[5] + xv[6] + xv[7]));
}

float unit_dot(uint rb, uint u, vec4 xv[8], vec4 xs) {
    uint base = rb + u * 34u;
    uvec4 a = qwords4(base + 2u) ^ 0x80808080u;  // u = q + 128
    uvec4 b = qwords4(base + 18u) ^ 0x80808080u;
    float f = dot(u8x4(a.x), xv[0]) + dot(u8x4(a.y), xv[1]) + dot(u8x4(a.z), xv[2]) + dot(u8x4(a.w), xv[3])
            + dot(u8x4(b.x), xv[4]) + dot(u8x4(b.y), xv[5]) + dot(u8x4(b.z), xv[6]) + dot(u8x4(b.w), xv[7]);
    return qhalf(base) * (256.0 * f - 384.0 * xs.x);  // 256 (f - sum x) - 128 sum x
}

#elif defined(WDTYPE_Q4_0) || defined(WDTYPE_Q4_1)
// block: f16 d, (q4_1: f16 m,) 16 bytes: value i the low nibble of byte i, value 16 + i the
// high one; value = d * (q - 8) (q4_0), d * q + m (q4_1)
#if defined(WDTYPE_Q4_0)
#define QS_AT 2u
#else
#define QS_AT 4u
#endif

uint unit_x4(uint u, uint i) {
    return 8u * u + i;  // vec4s 0..3: the low nibbles of the 4 words, 4..7: the high ones
}

vec4 unit_xsums(vec4 xv[8]) {
    return vec4(hsum(xv[0] + xv[1] + xv[2] + xv[3] + xv[4] + xv[5] + xv[6] + xv[7]));
}

float unit_dot(uint rb, uint u, vec4 xv[8], vec4 xs) {
    uint base = rb + u * QBYTES;
#if defined(WDTYPE_Q4_0)
    uvec4 qw = qwords4(base + 2u);
#else
    uint wi = base >> 2;
    uvec4 qw = uvec4(QWORD(wi + 1u), QWORD(wi + 2u), QWORD(wi + 3u), QWORD(wi + 4u));
#endif
    float f = dot(lo4(qw.x), xv[0]) + dot(lo4(qw.y), xv[1]) + dot(lo4(qw.z), xv[2]) + dot(lo4(qw.w), xv[3])
            + dot(hi4(qw.x), xv[4]) + dot(hi4(qw.y), xv[5]) + dot(hi4(qw.z), xv[6]) + dot(hi4(qw.w), xv[7]);
    float qx = 16.0 * (f - xs.x);  // sum(q x)
#if defined(WDTYPE_Q4_0)
    return qhalf(base) * (qx - 8.0 * xs.x);
#else
    vec2 dm = unpackHalf2x16(QWORD(base >> 2));
    return dm.x * qx + dm.y * xs.x;
#endif
}

#elif defined(WDTYPE_Q4_K)
// superblock: f16 d, f16 dmin, 12 bytes of 6-bit scales and minimums of 8 sub-blocks of 32
// (header: the first 16 bytes), 128 bytes: chunk c (64 values) is bytes 32c..32c+31, sub-block
// 2c in their low nibbles, 2c + 1 in the high ones; value = (d * sc) * q - dmin * m

// ggml's get_scale_min_k4 on whole words (header words y, z, w: the 12 scale bytes): the 6-bit scales
// (x) and minimums (y) of sub-blocks 4 high .. 4 high + 3, a byte each. Word-wise and without a branch,
// since neighbouring invocations read different halves of a block
uvec2 q4k_scales_mins(uvec4 head, bool high) {
    return high ? uvec2((head.w & 0x0F0F0F0Fu) | ((head.y >> 2) & 0x30303030u),
                        ((head.w >> 4) & 0x0F0F0F0Fu) | ((head.z >> 2) & 0x30303030u))
                : uvec2(head.y, head.z) & 0x3F3F3F3Fu;
}

// d * scale and dmin * minimum of sub-block j, from its half's words
vec2 q4k_scale_min(uvec4 head, uvec2 sm, uint j) {
    uint sh = (j & 3u) * 8u;
    return unpackHalf2x16(head.x) * vec2(byte_value(sm.x, sh), byte_value(sm.y, sh));
}

vec4 dequant4(uint rb, uint j) {
    uint base = rb + (j / 256u) * 144u;
    uint i = j % 256u;
    uint c = i / 64u;
    uint hi = (i / 32u) & 1u;
    uvec4 head = QVEC4(base >> 4);
    vec2 sm = q4k_scale_min(head, q4k_scales_mins(head, c >= 2u), 2u * c + hi);
    uint qw = QWORD((base + 16u + 32u * c + (i & 31u)) >> 2);
    return sm.x * (hi != 0u ? hi_nibbles(qw) : lo_nibbles(qw)) - sm.y;
}

// unit u: the 16 bytes 16 h..16 h + 15 of chunk c (u = 8 superblock + 2 c + h): 16 values of
// sub-block 2c from their low nibbles, 16 of 2c + 1 from the high ones
uint unit_x4(uint u, uint i) {
    uint v = u % 8u;
    return 64u * (u / 8u) + 16u * (v / 2u) + 4u * (v & 1u) + (i < 4u ? i : 4u + i);
}

vec4 unit_xsums(vec4 xv[8]) {  // the low nibbles' sub-block, the high ones'
    return vec4(hsum(xv[0] + xv[1] + xv[2] + xv[3]), hsum(xv[4] + xv[5] + xv[6] + xv[7]), 0.0, 0.0);
}

float unit_dot(uint rb, uint u, vec4 xv[8], vec4 xs) {
    uint base = rb + (u / 8u) * 144u;
    uint v = u % 8u;
    uvec4 head = QVEC4(base >> 4);
    uvec4 qw = QVEC4((base >> 4) + 1u + v);
    uvec2 sm = q4k_scales_mins(head, v >= 4u);
    vec2 lo = q4k_scale_min(head, sm, v & ~1u);
    vec2 hi = q4k_scale_min(head, sm, v | 1u);
    float fl = dot(lo4(qw.x), xv[0]) + dot(lo4(qw.y), xv[1]) + dot(lo4(qw.z), xv[2]) + dot(lo4(qw.w), xv[3]);
    float fh = dot(hi4(qw.x), xv[4]) + dot(hi4(qw.y), xv[5]) + dot(hi4(qw.z), xv[6]) + dot(hi4(qw.w), xv[7]);
    return lo.x * (16.0 * (fl - xs.x)) - lo.y * xs.x + hi.x * (16.0 * (fh - xs.y)) - hi.y * xs.y;
}

#elif defined(WDTYPE_Q6_K)
// superblock: 128 bytes ql, 64 bytes qh, 16 int8 scales, f16 d. Half h (128 values): value
// 32 s + l (s = 0..3, l = 0..31) is the low (s < 2) or high nibble of ql[64 h + 32 (s & 1) + l]
// with bits 2s, 2s+1 of qh[32 h + l] above them, minus 32; scale scales[value / 16];
// value = (d * scale) * q

float q6k_scale(uint base, uint sub) {  // d * scales[sub]
    uint off = base + 192u + sub;
    int sc = bitfieldExtract(int(QWORD(off >> 2)), int((off & 3u) * 8u), 8);
    return qhalf(base + 208u) * float(sc);
}

vec4 q6k_values(uint ql, uint qh, uint s) {  // q - 32 of 4 values, from their ql and qh bytes
    uvec4 low = (uvec4(ql, ql >> 8, ql >> 16, ql >> 24) >> ((s >> 1) * 4u)) & 15u;
    uvec4 high = (uvec4(qh, qh >> 8, qh >> 16, qh >> 24) >> (2u * s)) & 3u;
    return vec4(low | (high << 4)) - 32.0;
}

vec4 dequant4(uint rb, uint j) {
    uint base = rb + (j / 256u) * 210u;
    uint i = j % 256u;
    uint h = i / 128u;
    uint s = (i / 32u) & 3u;
    uint l = i & 31u;
    uint ql = qword(base + 64u * h + 32u * (s & 1u) + l);
    uint qh = qword(base + 128u + 32u * h + l);
    return q6k_scale(base, i / 16u) * q6k_values(ql, qh, s);
}

// unit u: l = 8 (u % 4) .. + 7 of half h = (u / 4) % 2 of superblock u / 8, for s = 0..3
uint unit_x4(uint u, uint i) {
    return 64u * (u / 8u) + 32u * ((u / 4u) & 1u) + 8u * (i / 2u) + 2u * (u % 4u) + (i & 1u);
}

vec4 unit_xsums(vec4 xv[8]) {  // per s: its 8 values
    return vec4(hsum(xv[0] + xv[1]), hsum(xv[2] + xv[3]), hsum(xv[4] + xv[5]), hsum(xv[6] + xv[7]));
}

// 1 + u / 64 of the 4 values with the low (s < 2) or high nibbles of ql and bits 2s, 2s + 1 of qh
vec4 q6k_f(uint ql, uint qh, uint s) {
    uint lq = ql >> ((s >> 1) * 4u);  // each byte's nibble at its bottom
    uint hq = qh >> (2u * s);
    uvec4 low = uvec4(lq << 17, lq << 9, lq << 1, lq >> 7) & 0x001E0000u;
    uvec4 high = uvec4(hq << 21, hq << 13, hq << 5, hq >> 3) & 0x00600000u;
    return uintBitsToFloat(low | high | 0x3F800000u);
}

float unit_dot(uint rb, uint u, vec4 xv[8], vec4 xs) {
    uint base = rb + (u / 8u) * 210u;
    uint h = (u / 4u) & 1u;
    uint l = 8u * (u % 4u);
    uvec2 ql0 = qwords2(base + 64u * h + l);
    uvec2 ql1 = qwords2(base + 64u * h + 32u + l);
    uvec2 qh = qwords2(base + 128u + 32u * h + l);
    uvec2 sw = qwords2(base + 192u + 8u * h);  // scales 8h..8h+7: sub-block 8h + 2s + l / 16
    uint sh = (l / 16u) * 8u;
    sw ^= 0x80808080u;  // int8 scales as q + 128
    vec4 sc = vec4(byte_value(sw.x, sh), byte_value(sw.x, sh + 16u), byte_value(sw.y, sh), byte_value(sw.y, sh + 16u)) - 128.0;
    vec4 f = vec4(dot(q6k_f(ql0.x, qh.x, 0u), xv[0]) + dot(q6k_f(ql0.y, qh.y, 0u), xv[1]),
                  dot(q6k_f(ql1.x, qh.x, 1u), xv[2]) + dot(q6k_f(ql1.y, qh.y, 1u), xv[3]),
                  dot(q6k_f(ql0.x, qh.x, 2u), xv[4]) + dot(q6k_f(ql0.y, qh.y, 2u), xv[5]),
                  dot(q6k_f(ql1.x, qh.x, 3u), xv[6]) + dot(q6k_f(ql1.y, qh.y, 3u), xv[7]));
    return qhalf(base + 208u) * dot(sc, 64.0 * f - 96.0 * xs);  // 64 (f - sum x) - 32 sum x
}

#endif

// --- eight values in two steps ----------------------------------------------------------
// Values j..j+7 (j % 8 == 0) of the row whose blocks start at byte rb, as qraw8 (the loads) and
// qvalues8 (the arithmetic, exact in f32), so that a kernel can issue the loads long before it
// needs the values: matmul_coop.comp's loaders keep the next slice's raw words in registers
// while the matrix units work (dequantizing as they load, the H200 spent ~40% of a 1B prefill
// waiting on them). q8_0, q4_0, q4_1: the run of bytes (8 or 4 of them, at an even offset: three
// words, the last clamped to the binding) and the scale's word, and their dequant4 goes through
// the same two steps (one dequantizer: the tiled and embed kernels, which CI runs, check the one
// the tensor cores' loaders use); the k-quants dequantize at once.

#if defined(WDTYPE_Q8_0) || defined(WDTYPE_Q4_0) || defined(WDTYPE_Q4_1)
struct QRaw8 {
    uvec3 w;   // the words around the run of quants
    uint s;    // the word with the scale (q4_1: d and m)
    uint off;  // the run's byte offset (its parity of halves picks the words' halves)
    uint sh;   // the scale's bit offset in s
};

QRaw8 qraw8(uint rb, uint j) {
    uint base = rb + (j / QBLOCK) * QBYTES;
    uint i = j % QBLOCK;
#if defined(WDTYPE_Q8_0)
    uint off = base + 2u + i;
#else
    uint off = base + QS_AT + (i & 15u);
#endif
    uint o = off >> 2;
    return QRaw8(uvec3(QWORD(o), QWORD(o + 1u), QWORD(min(o + 2u, QLAST))), QWORD(base >> 2), off, (base & 2u) * 8u);
}

void qvalues8(QRaw8 r, uint j, out vec4 a, out vec4 b) {
    uvec2 q = (r.off & 2u) != 0u ? (r.w.xy >> 16) | (r.w.yz << 16) : r.w.xy;
#if defined(WDTYPE_Q8_0)
    float d = unpackHalf2x16(r.s >> r.sh).x;
    a = d * ((u8x4(q.x ^ 0x80808080u) - 1.0) * 256.0 - 128.0);  // 1 + (q + 128) / 256 -> q
    b = d * ((u8x4(q.y ^ 0x80808080u) - 1.0) * 256.0 - 128.0);
#else
    bool high = j % QBLOCK >= 16u;
    vec4 ua = ((high ? hi4(q.x) : lo4(q.x)) - 1.0) * 16.0;  // 1 + u / 16 -> u
    vec4 ub = ((high ? hi4(q.y) : lo4(q.y)) - 1.0) * 16.0;
#if defined(WDTYPE_Q4_0)
    float d = unpackHalf2x16(r.s >> r.sh).x;
    a = d * (ua - 8.0);
    b = d * (ub - 8.0);
#else
    vec2 dm = unpackHalf2x16(r.s);
    a = dm.x * ua + dm.y;
    b = dm.x * ub + dm.y;
#endif
#endif
}

vec4 dequant4(uint rb, uint j) {  // the staged kernels' values, through the same path
    vec4 a;
    vec4 b;
    qvalues8(qraw8(rb, j & ~7u), j & ~7u, a, b);
    return (j & 4u) != 0u ? b : a;
}
#else
struct QRaw8 {
    vec4 a;
    vec4 b;
};

QRaw8 qraw8(uint rb, uint j) {
    return QRaw8(dequant4(rb, j), dequant4(rb, j + 4u));
}

void qvalues8(QRaw8 r, uint j, out vec4 a, out vec4 b) {
    a = r.a;
    b = r.b;
}
#endif

#endif  // QUANT_GLSL
