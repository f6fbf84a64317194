// attention.comp's decode form (DECODE_ROPE_KV): merging a (row, head)'s key slices, included
// after attention.comp's shared declarations and SUM_GROUPS helpers.

// (Row r, head h)'s slice leaves (m, l, its unnormalised output) in scratch and counts itself
// in; the last of the `live` slices to arrive (no workgroup waits for another) merges them as
// the online softmax does, writes out and zeroes what it read. Scratch per (row, head): [count,
// then per slice m, l, head_dim outputs]; `part` holds this slice's groups.
void combine_slices(uint h, uint r, uint live, float m, float l) {
    uint t = gl_LocalInvocationIndex;
    uint hd = p.head_dim;
    uint G = WG_SIZE / (hd / UE);
    uint hs = (r * p.n_heads + h) * (1u + SLICES * (2u + hd));
    uint mine = hs + 1u + gl_WorkGroupID.y * (2u + hd);
    for (uint d = t; d < hd; d += WG_SIZE) {
        scratch[mine + 2u + d] = floatBitsToUint(sum_part(d, hd, G));
    }
    if (t == 0u) {
        scratch[mine] = floatBitsToUint(m);
        scratch[mine + 1u] = floatBitsToUint(l);
    }
    memoryBarrierBuffer();  // the slice's results are visible before its count
    barrier();
    if (t == 0u) {
        arrived = atomicAdd(scratch[hs], 1u);
    }
    barrier();
    if (arrived != live - 1u) {
        return;
    }
    memoryBarrierBuffer();
    // every slice's maximum and sum at once, an invocation each (live <= SLICES <= WG_SIZE)
    uint stride = 2u + hd;
    if (t < live) {
        part_l[t] = uintBitsToFloat(scratch[hs + 1u + t * stride]);
        prob[t] = uintBitsToFloat(scratch[hs + 2u + t * stride]);
    }
    barrier();
    float mm = LOWEST;
    for (uint s = 0u; s < live; ++s) {
        mm = max(mm, part_l[s]);
    }
    float lsum = 0.0;
    for (uint s = 0u; s < live; ++s) {
        lsum += prob[s] * exp(part_l[s] - mm);
    }
    // then their outputs, rescaled, as many slices at a time as `part` holds (WG_SIZE * UE >=
    // 256 >= head_dim), their loads in flight together; the sums in qs
    for (uint d = t; d < hd; d += WG_SIZE) {
        qs[d] = 0.0;
    }
    uint batch = (WG_SIZE * UE) / hd;
    for (uint s0 = 0u; s0 < live; s0 += batch) {
        uint count = min(batch, live - s0) * hd;
        for (uint i0 = t; i0 < count; i0 += 4u * WG_SIZE) {
            float v[4];
            [[unroll]] for (uint k = 0u; k < 4u; ++k) {
                uint i = min(i0 + k * WG_SIZE, count - 1u);
                v[k] = uintBitsToFloat(scratch[hs + 1u + (s0 + i / hd) * stride + 2u + i % hd]);
            }
            [[unroll]] for (uint k = 0u; k < 4u; ++k) {
                uint i = i0 + k * WG_SIZE;
                if (i < count) {
                    part[i] = v[k] * exp(part_l[s0 + i / hd] - mm);
                }
            }
        }
        barrier();
        for (uint d = t; d < hd; d += WG_SIZE) {
            float o = qs[d];
            for (uint i = d; i < count; i += hd) {
                o += part[i];
            }
            qs[d] = o;
        }
        barrier();
    }
    for (uint d = t; d < hd; d += WG_SIZE) {
        out_[(r * p.n_heads + h) * hd + d] = lsum > 0.0 ? qs[d] / lsum : 0.0;  // no key at all: zeros
    }
    barrier();  // all read before anything is zeroed
    for (uint i = t; i < live * (2u + hd); i += WG_SIZE) {
        scratch[hs + 1u + i] = 0u;
    }
    if (t == 0u) {
        scratch[hs] = 0u;
    }
}
