"""The process layout: the image and its vvar pages placed by mm's
get_unmapped_area, and VMAs for them so that libc's mappings go around
(emulator/layout.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from emulator import layout
from emulator.errors import ImageError
from emulator.run import RunConfig, new_process, run
from mm import flags as F
from mm.vma import VMA
from vdso.asm_build import build_image
from vdso.image import MAX_IMAGE_BYTES
from vdso.loader import load_image

ASM = Path(__file__).resolve().parent.parent / "asm"


def _outputs(report: dict) -> list[tuple[str, int]]:
    return [(c["outcome"], c["ret"], c["output"]) for c in report["calls"]]


def _big_image(tmp_path, pad: int) -> str:
    """Our own vgetrandom with `pad` bytes of data after the code."""
    src = tmp_path / "big.s"
    src.write_text((ASM / "vgetrandom.s").read_text() + f"\n.space {pad:#x}\n")
    return str(src)


def test_an_image_larger_than_the_old_gap_runs_like_the_small_one(tmp_path):
    # 0x50000 bytes: the fixed layout put the state mapping inside this image.
    big = load_image(_big_image(tmp_path, 0x50000))
    assert big.size > 0x40000
    small = load_image("builtin")
    cfg = dict(sizes=[16, 300], calls=3, seed=7)
    r_big, r_small = run(RunConfig(image=big, **cfg)), run(RunConfig(image=small, **cfg))
    assert _outputs(r_big) == _outputs(r_small)
    assert all(c["outcome"] == "returned" for c in r_big["calls"])
    lo, hi = layout.image_span(big)
    for key in ("state", "buffer"):
        assert not lo <= int(r_big["config"][key], 16) < hi


def test_kernel_mappings_are_vmas_that_mmap_goes_around():
    kernel, m, caller = new_process(RunConfig(image=load_image("builtin")))
    names = {v.name: v for v in m.mm.vmas}
    img = kernel.image
    assert (names["[vdso]"].start, names["[vdso]"].end) == (img.base, img.base + img.size)
    assert names["[vvar]"].end == img.base and names["[vvar]"].start == img.vvar_start
    assert "[faultpath-ret]" in names
    for v in (names["[vdso]"], names["[vvar]"]):
        assert v.vm_flags & F.VM_IO and not v.vm_flags & F.VM_WRITE
    # a 16 MiB mapping, as the largest output buffer, lands beside the image, not on it
    addr = m.mm.mmap(0, 16 << 20, F.PROT_READ | F.PROT_WRITE, F.MAP_PRIVATE | F.MAP_ANONYMOUS, -1, 0)
    assert addr > 0 and (addr + (16 << 20) <= img.vvar_start or addr >= img.base + img.size)
    # idempotent
    before = len(m.mm.vmas)
    layout.install_kernel_mappings(m.mm, kernel)
    assert len(m.mm.vmas) == before


def test_a_collision_is_one_line(monkeypatch):
    kernel, m, caller = new_process(RunConfig(image=load_image("builtin")))
    child_mm = type(m.mm)(kernel.phys)
    child_mm.vma_tree.insert(VMA(kernel.image.base, kernel.image.base + 4096, F.VM_READ, "squatter"))
    with pytest.raises(ImageError) as e:
        layout.install_kernel_mappings(child_mm, kernel)
    assert "overlaps squatter" in str(e.value) and "\n" not in str(e.value)


def _occupied_hint(monkeypatch, image):
    """Make the image's usual place taken in the initial address space."""
    real = layout._initial_mm

    def blocked():
        mm = real()
        lo, hi = layout.image_span(image)
        mm.vma_tree.insert(VMA(lo, hi, F.VM_READ, "blocker"))
        return mm
    monkeypatch.setattr(layout, "_initial_mm", blocked)


def test_an_assembled_image_that_cannot_have_its_base_is_refused(monkeypatch):
    img = build_image("builtin")
    _occupied_hint(monkeypatch, img)
    with pytest.raises(ImageError, match=r"assembled for 0x7ffff7fc0000, but its .* do not fit there"):
        layout.place_image(img)


@pytest.mark.host_vdso
def test_a_position_independent_image_goes_where_get_unmapped_area_says(monkeypatch, host_image):
    want = run(RunConfig(image=host_image, sizes=[16, 200], calls=2))
    _occupied_hint(monkeypatch, host_image)
    placed = layout.place_image(host_image)
    assert placed.base != host_image.base
    got = run(RunConfig(image=host_image, sizes=[16, 200], calls=2))
    assert got["image"]["getrandom"] == hex(placed.symbol("__vdso_getrandom"))
    assert _outputs(got) == _outputs(want)


def test_images_are_capped(tmp_path):
    from vdso.errors import AssemblyError
    with pytest.raises(AssemblyError, match="more than an image may hold"):
        load_image(_big_image(tmp_path, MAX_IMAGE_BYTES))
