"""The shared GPU kernels: shipped SPIR-V matches its sources, the variant table covers the catalogue.

Compiling needs glslc (or glslangValidator); without one the source check is skipped,
unless SHADERBAY_REQUIRE_BACKENDS is set (CI installs glslc).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace

import pytest
from shaderbay.backend import Caps
from shaderbay.backends.shaders import build, records, variants
from shaderbay.dtypes import BLOCK_DTYPES
from shaderbay.kernels import CATALOGUE

SPIRV_MAGIC = 0x07230203
SPIRV_1_5 = 0x00010500


def _caps(subgroups: bool = True, size: int = 32, **kw) -> Caps:
    base = dict(
        device="test",
        device_type="discrete",
        f16=True,
        subgroups=subgroups,
        subgroup_size=size if subgroups else 0,
        timestamps=True,
        max_buffer_size=1 << 32,
        max_binding_size=1 << 31,
        max_workgroup_size=1024,
        max_workgroups=65535,
        offset_alignment=16,
        max_shared_memory=49152,
        max_push_constants=128,
        max_storage_buffers=8,
    )
    base.update(kw)
    return Caps(**base)


def _require_compiler() -> None:
    try:
        build.compiler()
    except build.CompilerMissing as exc:
        if os.environ.get("SHADERBAY_REQUIRE_BACKENDS"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def test_shipped_spirv_matches_the_sources():
    _require_compiler()
    problems = build.check()
    assert problems == [], "run `python -m shaderbay.backends.shaders.build`:\n" + "\n".join(problems)


def test_every_variant_ships_spirv_1_5():
    for v in variants.table():
        code = variants.spirv(v)
        words = memoryview(code).cast("I")
        assert len(code) % 4 == 0 and words[0] == SPIRV_MAGIC, v.name
        assert words[1] == SPIRV_1_5, f"{v.name}: SPIR-V version {words[1]:#x}; wgpu needs 1.5 (vulkan1.2)"


def test_no_shipped_spirv_trips_wgpus_translator():
    for v in variants.table():
        assert build.naga_traps(variants.spirv(v)) == "", v.name


@pytest.mark.skipif(shutil.which("spirv-val") is None, reason="spirv-val (spirv-tools) is not installed")
def test_shipped_spirv_validates():
    bad = []
    for v in variants.table():
        path = build.SPV / f"{v.name}.spv"
        cmd, env = build.validator(v)  # the pinned spirv-val for cooperative-matrix sources
        res = subprocess.run([*cmd, str(path)], capture_output=True, text=True, env=env)
        if res.returncode:
            bad.append(f"{v.name}: {res.stderr or res.stdout}")
    assert not bad, "\n".join(bad)


def test_every_kernel_and_constant_choice_has_a_variant_for_any_device():
    plain = _caps(subgroups=False)
    for name in CATALOGUE:
        for consts in records.combos(name):
            rows = variants.variants_for(name, consts)
            assert rows, f"no variant of {name}({consts})"
            # a fallback that runs everywhere and for any parameters
            assert any(not v.needs and v.when is None and variants.usable(v, plain) for v in rows), (
                f"{name}({consts}) has no variant without needs and without a `when` predicate"
            )
        assert variants.supported(name, plain)


def test_variant_names_and_sources():
    names = [v.name for v in variants.table()]
    assert len(names) == len(set(names))
    for v in variants.table():
        assert (build.GLSL / v.source).is_file(), v.source
        spec = CATALOGUE[v.kernel]
        assert dict(v.constants) == spec.compiled_constants(spec.resolve_constants(dict(v.constants))), v.name
        assert v.invocations <= 1024, v.name


def test_selection_follows_capabilities_and_the_env(monkeypatch):
    monkeypatch.delenv(variants.ENV_NO_SUBGROUPS, raising=False)
    params = {"rows": 1, "n": 576, "eps": 1e-5}
    assert variants.select("rmsnorm", {}, params, _caps(True)).needs == {"subgroups"}
    assert not variants.select("rmsnorm", {}, params, _caps(False)).needs
    monkeypatch.setenv(variants.ENV_NO_SUBGROUPS, "1")
    for name in CATALOGUE:
        for v in variants.variants_for(name):
            if "subgroups" in v.needs:
                assert not variants.usable(v, _caps(True)), v.name
    assert not variants.select("argmax", {}, {"rows": 1, "n": 10}, _caps(True)).needs
    for no in ("off", "false", "0", "no", ""):  # "no" words leave subgroups on, as for every yes/no flag
        monkeypatch.setenv(variants.ENV_NO_SUBGROUPS, no)
        assert variants.select("rmsnorm", {}, params, _caps(True)).needs == {"subgroups"}, no


def _matvec_choices(caps: Caps) -> dict[tuple, str]:
    """The matmul variant chosen for every constant choice at 1, 2 and 64 rows of a 576-wide k."""
    out = {}
    for c in records.combos("matmul"):
        for rows in (1, 2, 64):
            params = {"rows": rows, "n": 960, "k": 576, "eps": 1e-5}
            out[(tuple(c.values()), rows)] = variants.select("matmul", c, params, caps).name
    return out


@pytest.mark.parametrize("sg", [True, False])
def test_cpu_devices_take_the_cpu_matrix_vector_forms_and_gpus_keep_theirs(monkeypatch, sg):
    monkeypatch.delenv(variants.ENV_GPU_FORMS, raising=False)
    monkeypatch.delenv(variants.ENV_NO_SUBGROUPS, raising=False)
    cpu = _matvec_choices(_caps(sg, size=8, device_type="software"))
    for (consts, rows), name in cpu.items():
        assert "_cpu_vec" in name, (consts, rows, name)
        # batch invariance: the 1-row form and the batched one share workgroup size, unroll and reduction
        alone, batched = variants.by_name(cpu[(consts, 1)]), variants.by_name(name)
        assert (alone.workgroup, alone.needs) == (batched.workgroup, batched.needs), name
        assert alone.defines["UNROLL"] == batched.defines["UNROLL"], name
    for kind in ("discrete", "integrated", "other"):
        gpu = _matvec_choices(_caps(sg, device_type=kind))
        assert not any("_cpu_" in name for name in gpu.values()), kind
    monkeypatch.setenv(variants.ENV_GPU_FORMS, "1")
    assert _matvec_choices(_caps(sg, size=8, device_type="software")) == _matvec_choices(_caps(sg, size=8))


@pytest.mark.parametrize("head_dim,wg", [(64, 8), (128, 16), (256, 32)])
def test_cpu_devices_take_one_slice_of_decode_attention_in_the_smallest_workgroup(monkeypatch, head_dim, wg):
    monkeypatch.delenv(variants.ENV_GPU_FORMS, raising=False)
    monkeypatch.delenv(variants.ENV_NO_SUBGROUPS, raising=False)
    params = {"rows": 3, "n_heads": 32, "n_kv_heads": 8, "head_dim": head_dim, "block_size": 16, "blocks_per_seq": 256}
    software = _caps(True, size=8, device_type="software")
    cpu = variants.select("decode_attention", {"cache_dtype": "f16"}, params, software)
    assert cpu.name == f"decode_attention_f16_vec_cpu{wg}_sg"
    assert cpu.grid(params) == (32, 1, 3)  # a workgroup a (head, row): no slices
    gpu = variants.select("decode_attention", {"cache_dtype": "f16"}, params, _caps(True, device_type="discrete"))
    assert "_cpu" not in gpu.name and gpu.grid(params)[1] > 1
    monkeypatch.setenv(variants.ENV_GPU_FORMS, "1")
    assert "_cpu" not in variants.select("decode_attention", {"cache_dtype": "f16"}, params, _caps(True, size=8)).name


def test_a_variant_needing_more_shared_memory_than_the_device_has_is_unusable():
    rmsnorm = variants.by_name("rmsnorm")
    assert variants.usable(rmsnorm, _caps(max_shared_memory=rmsnorm.shared_bytes))
    assert not variants.usable(rmsnorm, _caps(max_shared_memory=rmsnorm.shared_bytes - 1))


def test_a_required_subgroup_size_must_match():
    v = replace(variants.variants_for("argmax")[0], subgroup_size=32)
    assert variants.usable(v, _caps(True, 32))
    assert not variants.usable(v, _caps(True, 8))


def test_defines_give_bindings_in_catalogue_order():
    for name, spec in CATALOGUE.items():
        for v in variants.variants_for(name):
            d = v.compile_defines()
            present = spec.bindings_for(dict(v.constants))
            for i, b in enumerate(present):
                assert d[f"BINDING_{b.name.upper()}"] == str(i), (v.name, b.name)
            absent = {b.name for b in spec.bindings} - {b.name for b in present}
            assert not any(f"BINDING_{a.upper()}" in d for a in absent)
            assert (d["WG_X"], d["WG_Y"], d["WG_Z"]) == tuple(str(w) for w in v.workgroup)


def test_generated_headers_declare_params_in_catalogue_order():
    for name, spec in CATALOGUE.items():
        text = (build.GLSL / f"kernel_{name}.glsl").read_text()
        block = text[text.index("uniform Params {") : text.index("} p;")]
        members = [line.split()[-1].rstrip(";") for line in block.splitlines()[1:] if line.strip()]
        assert members == [build.identifier(p.name) for p in spec.params], name


def test_grids_stay_within_the_guaranteed_limits():
    huge = {
        "rows": 1 << 20,
        "n": 1 << 24,
        "dim": 1 << 16,
        "heads": 128,
        "head_dim": 256,
        "k": 1 << 14,
        "n_heads": 128,
        "n_kv_heads": 8,
        "hist_cap": 4096,
    }
    for v in variants.table():
        spec = CATALOGUE[v.kernel]
        params = {p.name: huge.get(p.name, 1) for p in spec.params}
        params |= {c.name: c.choices[-1] for c in spec.constants if not c.compiled}  # e.g. rows_form matrix
        if v.applies(params):
            grid = v.grid(params)
            assert all(1 <= g <= records.MAX_GROUPS for g in grid), (v.name, grid)


def test_wgpu_accepts_every_shipped_kernel():
    """wgpu's translator aborts the process on some SPIR-V; try every file in a child process."""
    pytest.importorskip("wgpu")
    script = textwrap.dedent(
        """
        import os, sys, tempfile
        os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.mkdtemp())
        import wgpu
        from shaderbay.backends.shaders import records, variants
        adapter = wgpu.gpu.request_adapter_sync(power_preference="high-performance")
        if adapter is None or adapter.info["backend_type"] != "Vulkan":
            print("SKIP no Vulkan adapter"); sys.exit(0)
        feats = [f for f in ("subgroup", "immediates", "shader-f16") if f in adapter.features]
        limits = {"max_immediate_size": 128} if "immediates" in feats else {}
        dev = adapter.request_device_sync(required_features=feats, required_limits=limits)
        for v in variants.table():
            if "subgroups" in v.needs and "subgroup" not in feats:
                continue
            if any(n.startswith(records.COOPMAT) for n in v.needs):
                continue  # cooperative matrices: Vulkan only, wgpu has none
            print("trying", v.name, flush=True)
            m = dev.create_shader_module(code=variants.spirv(v))
            dev.create_compute_pipeline(layout="auto", compute={"module": m, "entry_point": "main"})
        print("ALL OK")
        """
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    if "SKIP" in res.stdout:
        pytest.skip(res.stdout.strip())
    tried = [line for line in res.stdout.splitlines() if line.startswith("trying")]
    assert "ALL OK" in res.stdout, f"wgpu failed on {tried[-1:]}:\n{res.stderr[-3000:]}"


def test_cooperative_matrix_variant_only_with_the_shape():
    from shaderbay.backends.shaders.records import COOP_SHAPE

    params = {"rows": 512, "n": 2048, "k": 2048, "eps": 1e-5}
    f16 = {"wdtype": "f16"}
    coop = _caps(cooperative_matrix=(COOP_SHAPE,))
    assert variants.select("matmul", f16, params, coop).source == "matmul_coop.comp"
    assert variants.select("matmul", {"wdtype": "bf16"}, params, coop).source == "matmul_coop.comp"
    for blocks in BLOCK_DTYPES:  # dequantized as they are staged
        assert variants.select("matmul", {"wdtype": blocks}, params, coop).source == "matmul_coop.comp"
        assert variants.select("matmul", {"wdtype": blocks}, params, _caps()).source == "matmul_tiled.comp"
    assert variants.select("matmul", f16, params, _caps()).source == "matmul_tiled.comp"  # no shape listed
    assert variants.select("matmul", {"wdtype": "f32"}, params, coop).source == "matmul_tiled.comp"
    assert variants.select("matmul", f16, {**params, "rows": 1}, coop).source == "matmul_vec.comp"
    assert variants.select("matmul", f16, {**params, "k": 2044}, coop).source == "matmul_tiled.comp"  # k % 8
    assert variants.select("matmul", f16, params, _caps(cooperative_matrix=(COOP_SHAPE,), size=64)).source == (
        "matmul_tiled.comp"  # written for subgroups of 32
    )


def test_prefill_tile_in_fewer_subgroups_only_for_products_of_many_tiles():
    from shaderbay.backends.shaders.records import COOP_SHAPE
    from shaderbay.backends.shaders.variants_heavy import COOP_4X2_MIN_TILES

    coop = _caps(cooperative_matrix=(COOP_SHAPE,))
    f16 = {"wdtype": "f16"}
    tiles = {"rows": 512, "k": 2048, "eps": 1e-5}  # 8 row tiles of 64: n / 128 column tiles each

    def tag(n: int, wdtype: dict = f16) -> str:
        return variants.select("matmul", wdtype, {**tiles, "n": n}, coop).name.rsplit("_", 1)[1]

    assert tag(16384) == tag(128256) == tag(COOP_4X2_MIN_TILES // 8 * 128) == "coop4x2"  # 1B gate_up, LM head
    assert tag(2048) == tag((COOP_4X2_MIN_TILES // 8 - 1) * 128) == "coop"  # 1B o and down: 128 tiles
    assert tag(16384, {"wdtype": "bf16"}) == "coop4x2"
    assert tag(16384, {"wdtype": "q4_0"}) == "coop"  # block weights keep their own tile


def test_decode_rows_form_keeps_a_rows_sums_at_every_rows_count():
    """The rows form's batch invariance: whichever tile a product takes at a rows count, its slices'
    depth, k groups (in subgroups or accumulator sets) and splits, which fix a row's sums, are the
    same at every rows count; the 16-row tile up to 16 rows, the widest 64-row tile that fills the
    device from 17."""
    from shaderbay.backends.shaders.records import COOP_SHAPE
    from shaderbay.backends.shaders.variants_heavy import COOP_ROWS_BK, COOP_ROWS_WARPS_K
    from shaderbay.kernels import BATCH_ROWS

    coop = _caps(cooperative_matrix=(COOP_SHAPE,))
    for n, k, wide in ((2048, 8192, "cooprows64x64"), (16384, 2048, "cooprows64x128"), (576, 1536, "cooprows")):
        chosen = {}
        for r in (1, 2, 16, 17, BATCH_ROWS):
            params = {"rows": r, "n": n, "k": k, "rows_form": "matrix"}
            v = variants.select("matmul", {"wdtype": "f16"}, params, coop)
            d = v.compile_defines()
            sums = (d["BK"], int(d["WARPS_K"]) * int(d["K_SETS"]), v.grid(params)[2])
            chosen[r] = (v.name.rsplit("_", 1)[-1], sums)
        assert {tag for tag, _ in list(chosen.values())[:3]} == {"cooprows"}, chosen
        assert {tag for tag, _ in list(chosen.values())[3:]} == {wide}, chosen
        assert {sums for _, sums in chosen.values()} == {(str(COOP_ROWS_BK), COOP_ROWS_WARPS_K, chosen[1][1][2])}


def test_decode_rows_form_splits_few_tiles_by_n_and_k_alone():
    """The rows form's splits (workgroups sharing a tile, grid z) and its working memory: the splits
    follow n and k, never the rows or the tile (a row's sums depend on them); each split walks at
    least one round; the counts come first, as many as a split product's tiles can be at any rows
    count."""
    from shaderbay.backends.shaders.variants_heavy import COOP_ROWS_BK, COOP_ROWS_WARPS_K
    from shaderbay.kernels import BATCH_ROWS

    forms = [variants.by_name(f"matmul_f16_nobias_accumulate_none_none_cooprows{t}") for t in ("", "64x64", "64x128")]
    for v in forms:
        assert v.compile_defines()["BINDING_SCRATCH"] == "3"  # after x, w and out
    for n, k, splits in ((2048, 8192, 4), (2048, 2048, 4), (3072, 2048, 3), (16384, 2048, 1), (576, 1536, 1)):
        grids = {v.grid({"rows": r, "n": n, "k": k}) for r in (1, 2, 17, BATCH_ROWS) for v in forms}
        assert {g[2] for g in grids} == {splits}, (n, k, grids)
        assert splits <= -(-k // (COOP_ROWS_BK * COOP_ROWS_WARPS_K))
        for v, (bm, bn) in zip(forms, ((16, 32), (64, 64), (64, 128)), strict=True):
            tiles = -(-BATCH_ROWS // bm) * -(-n // bn)
            words = v.scratch({"rows": BATCH_ROWS, "n": n, "k": k})
            assert words == (BATCH_ROWS // bm * 256 + tiles * splits * (bm * bn + bm) if splits > 1 else 1)
    assert all(u.scratch is None for u in variants.table() if "_cooprows" not in u.name)


def test_cooperative_attention_only_with_the_shape_and_past_batch_rows():
    from shaderbay.backends.shaders.records import COOP_SHAPE
    from shaderbay.kernels import BATCH_ROWS

    params = {"rows": BATCH_ROWS + 1, "n_heads": 32, "n_kv_heads": 8, "head_dim": 64, "q_stride": 2048,
              "block_size": 16, "blocks_per_seq": 256, "n_blocks": 4096, "n_seqs": 16, "scale": 0.125}  # fmt: skip
    f16 = {"cache_dtype": "f16"}
    coop = _caps(cooperative_matrix=(COOP_SHAPE,))
    assert variants.select("attention", f16, params, coop).source == "attention_coop.comp"
    assert variants.select("attention", f16, params, _caps()).source == "attention.comp"  # no shape listed
    # up to BATCH_ROWS the per-row forms: a row's result never depends on its batch
    assert variants.select("attention", f16, {**params, "rows": BATCH_ROWS}, coop).source == "attention.comp"
    assert variants.select("attention", {"cache_dtype": "f32"}, params, coop).source == "attention.comp"
    assert variants.select("attention", f16, {**params, "head_dim": 128}, coop).source == "attention.comp"
    assert variants.select("attention", f16, params, _caps(cooperative_matrix=(COOP_SHAPE,), size=64)).source == (
        "attention.comp"  # written for subgroups of 32
    )
