"""python -m gla_np.golden: the file, the bounds, and the bugs each case catches.

CATCHES is the table of docs/testing-your-kernel.md: for each planted bug
(tests/planted_kernels.py), the cases whose bounds it breaks. The test recomputes it from the
file, so the table in the docs cannot drift from what the cases do.
"""

import io
import os
import zipfile

import numpy as np
import pytest

import planted_kernels as pk
from gla_np import golden

ARGS = ("q", "k", "v", "g", "initial_state", "do", "d_final_state")
REQUIRED = [c.name for c in golden.CASES if not c.optional]
CATCHES = {
    "decay_after_write": {"custom_scale", "mild_gates", "moderate_gates", "strong_gates", "k1_v1",
                          "final_state_gradient_only", "no_state_no_final_gradient",
                          "hard_resets"},
    "dg_without_final_state": {"custom_scale", "zero_gates", "moderate_gates", "k1_v1",
                               "final_state_gradient_only", "hard_resets"},
    "naive_factoring": {"strong_gates", "hard_resets"},
    "scale_on_k": {"custom_scale", "zero_gates", "moderate_gates", "strong_gates",
                   "final_state_gradient_only", "hard_resets"},
    "ignores_scale": {"custom_scale"},
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("golden")
    paths = {}
    for layout in ("BHTK", "BTHK"):
        paths[layout] = str(folder / f"cases-{layout}.npz")
        assert golden.main(["--out", paths[layout], "--layout", layout]) == 0
    return paths


def load(path):
    return golden.load_cases(path)


def cases_in(loaded):
    return loaded.cases


def breaks(kernel, case, layout):
    """The tensors whose bound the kernel breaks on this case (a nan breaks it too)."""
    if layout == "BHTK":  # the planted kernels take fla's layout
        case = {k: (np.swapaxes(x, 1, 2) if k in ("q", "k", "v", "g", "do") else x)
                for k, x in case.items()}
    out = kernel(*(case.get(n) for n in ARGS), np.float32(case["scale"]))
    broken = []
    for name, x in out.items():
        if name in case:
            x = np.swapaxes(x, 1, 2) if layout == "BHTK" and x.ndim == 4 and \
                name not in ("final_state", "d_initial_state") else x
            err = np.abs(x.astype(np.float64) - case[name])
            key = "bound_dg_identity" if name == "dg" and kernel.dg_identity else "bound_" + name
            if not (err <= case[key]).all():  # nan compares False
                broken.append(name)
    return broken


def test_the_file_holds_every_case_with_inputs_references_and_bounds(files):
    loaded = load(files["BTHK"])
    assert (loaded.layout, loaded.dtype, loaded.chunk_size) == ("BTHK", "float32", 64)
    cases = cases_in(loaded)
    assert list(cases) == [c.name for c in golden.CASES]
    for name, case in cases.items():
        assert case["q"].dtype == np.float32 and case["o"].dtype == np.float64
        for key in ("o", "final_state", "dq", "dk", "dv", "dg"):
            assert case["bound_" + key].shape == case[key].shape
            assert (case["bound_" + key] > 0).all(), (name, key)
        assert str(case["about"])
    mild = cases["mild_gates"]
    assert mild["q"].shape == (2, 37, 1, 4)  # (B, T, H, K)
    assert 37 % 16 and 37 % 32 and 37 % 64
    assert cases["k1_v1"]["q"].shape[-1] == 1
    assert cases["packed_sequences"]["final_state"].shape[0] == 3
    assert np.isneginf(cases["hard_resets"]["g"]).any()


@pytest.mark.parametrize("layout", ["BHTK", "BTHK"])
@pytest.mark.parametrize("kernel", pk.CORRECT, ids=lambda k: k.__name__)
def test_correct_float32_kernels_pass_every_case(files, layout, kernel):
    for name, case in cases_in(load(files[layout])).items():
        if "cu_seqlens" in case:
            continue  # the planted kernels do not take packed sequences
        assert breaks(kernel, case, layout) == [], name


def test_each_planted_bug_is_caught_by_the_cases_in_the_table(files):
    cases = cases_in(load(files["BTHK"]))
    found = {}
    for kernel in pk.PLANTED:
        found[kernel.__name__] = {name for name, case in cases.items()
                                  if "cu_seqlens" not in case and breaks(kernel, case, "BTHK")}
        assert found[kernel.__name__] & set(REQUIRED), kernel.__name__  # no optional case needed
    assert found == CATCHES


def test_packed_case_is_the_sequences_run_one_by_one(files):
    case = cases_in(load(files["BTHK"]))["packed_sequences"]
    cu = case["cu_seqlens"]
    for n in range(len(cu) - 1):
        seg = slice(cu[n], cu[n + 1])
        out = pk.stable_recurrent(*(case[a][:, seg] for a in ("q", "k", "v", "g")),
                                  case["initial_state"][n:n + 1], case["do"][:, seg],
                                  case["d_final_state"][n:n + 1], np.float32(case["scale"]))
        assert (np.abs(out["o"] - case["o"][:, seg]) <= case["bound_o"][:, seg]).all()
        assert (np.abs(out["final_state"][0] - case["final_state"][n])
                <= case["bound_final_state"][n]).all()
        assert (np.abs(out["dg"] - case["dg"][:, seg]) <= case["bound_dg"][:, seg]).all()


def test_the_file_gets_an_ordinary_mode_not_the_temporary_files(tmp_path):
    out, plain = tmp_path / "cases.npz", tmp_path / "plain"
    plain.write_bytes(b"")  # what open() gives under the current umask
    golden.write_cases(str(out))
    assert (out.stat().st_mode & 0o777) == (plain.stat().st_mode & 0o777)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    out = tmp_path / "cases.npz"
    out.write_bytes(b"old")

    def broken_savez(f, **arrays):
        f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(golden.np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        golden.write_cases(str(out))
    assert out.read_bytes() == b"old" and os.listdir(tmp_path) == ["cases.npz"]


@pytest.mark.parametrize("argv, pattern", [
    (["--out", "/nonexistent-folder/cases.npz"], "the folder /nonexistent-folder does not exist"),
    (["--out", "{tmp}"], "is a folder; expected a file name"),
    (["--out", "{tmp}/c.npz", "--layout", "TBHK"], "invalid choice: 'TBHK'"),
    (["--out", "{tmp}/c.npz", "--dtype", "int8"], "invalid choice: 'int8'"),
    (["--out", "{tmp}/c.npz", "--chunk-size", "0"], "--chunk-size: expected a positive integer"),
    ([], "the following arguments are required: --out"),
])
def test_bad_options_are_refused_in_one_line(tmp_path, capsys, argv, pattern):
    with pytest.raises(SystemExit) as info:
        golden.main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert info.value.code == 2
    assert pattern in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_bfloat16_cases_hold_bfloat16_values_and_bf16_rounded_outputs_pass():
    """NumPy has no bfloat16: the file stores float32 values whose low 16 bits are 0. A kernel
    whose outputs are rounded to bfloat16 (a float32 kernel, then the cast) passes the bounds."""
    for name, case in golden.make_cases(layout="BTHK", dtype="bfloat16").items():
        for key in ("q", "k", "v", "g"):
            assert case[key].dtype == np.float32
            assert not (case[key].view(np.uint32) & 0xFFFF).any(), (name, key)
        if "cu_seqlens" in case:
            continue
        out = pk.gla_np_chunked(64)(*(case.get(n) for n in ARGS), np.float32(case["scale"]))
        for key, x in out.items():
            x = golden.round_to_bfloat16(x)
            assert (np.abs(x - case[key]) <= case["bound_" + key]).all(), (name, key)
    assert golden.round_to_bfloat16(np.float32(1 + 2 ** -8)) == 1.0  # a tie goes to even
    assert golden.round_to_bfloat16(np.float32(1 + 3 * 2 ** -9)) == 1 + 2 ** -7


def test_optional_cases_carry_a_flag_and_texts_follow_the_chunk_size():
    c16 = golden.make_cases(chunk_size=16)
    assert {n for n, c in c16.items() if c["optional"]} == {"hard_resets", "packed_sequences"}
    assert all(c["optional"].dtype == np.bool_ for c in c16.values())
    assert "T = 70 (4 chunks of 16 and a ragged one of 6)" in str(c16["moderate_gates"]["about"])
    c64 = golden.make_cases(chunk_size=64)
    assert "T = 129 (2 chunks of 64 and a ragged one of 1)" in \
        str(c64["no_state_no_final_gradient"]["about"])
    assert float(c64["custom_scale"]["scale"]) == 0.3  # not K ** -0.5 = 0.5


def test_a_tf32_file_keeps_float32_inputs_with_tf32_bounds():
    f32, tf32 = (golden.make_cases(layout="BTHK", dtype=d) for d in ("float32", "tf32"))
    for name in f32:
        for key in ("q", "k", "v", "g"):
            np.testing.assert_array_equal(tf32[name][key], f32[name][key])  # not rounded
            assert tf32[name][key].dtype == np.float32
    ratio = tf32["zero_gates"]["bound_o"] / f32["zero_gates"]["bound_o"]  # no gate span
    assert 100 < ratio.max() <= 512
    forward, backward = pk.chunked_kernel(16, tf32=True)
    kernel = pk.as_kernel(forward, backward)
    case = tf32["moderate_gates"]
    out = kernel(*(case.get(n) for n in ARGS), np.float32(case["scale"]))
    assert all((np.abs(out[n] - case[n]) <= case["bound_" + n]).all() for n in out)


def test_dg_identity_bounds_are_in_the_file():
    case = golden.make_cases(layout="BTHK")["strong_gates"]
    assert (case["bound_dg_identity"] >= case["bound_dg"]).all()
    assert (case["bound_dg_identity"] / case["bound_dg"]).max() > 1e6


def test_load_cases_refuses_what_is_not_a_plain_golden_file(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match=r"^path: .* is not a regular file"):
        golden.load_cases(fifo)
    with pytest.raises(ValueError, match=r"^path: .* is not a regular file"):
        golden.load_cases(tmp_path)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, cases=np.array(["a"]), layout=np.array("BTHK"), dtype=np.array("float32"),
             chunk_size=np.int64(64), **{"a/q": np.array([{"x": 1}], dtype=object)})
    with pytest.raises(ValueError, match=r"holds Python objects \(pickled\)"):
        golden.load_cases(pickled)
    # a header that declares more than the file holds is refused before allocating it
    lying = tmp_path / "lying.npz"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, dict(descr="<f8", fortran_order=False,
                                                      shape=(400000000000,)))
    with zipfile.ZipFile(lying, "w") as z:
        z.writestr("a/q.npy", header.getvalue() + bytes(32))
    with pytest.raises(ValueError, match=r"declares shape \(400000000000,\)"):
        golden.load_cases(lying)
    text = tmp_path / "text.npz"
    text.write_text("not a zip")
    with pytest.raises(ValueError, match=r"is not an \.npz file"):
        golden.load_cases(text)
