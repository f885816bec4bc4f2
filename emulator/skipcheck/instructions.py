"""The corpus assembled: each line's bytes, its store, its rip-relative twin,
crossed with the prefix variants (`corpus.CROSS`).

`build_instructions` turns a corpus into Instructions and per-line errors;
`instruction` builds one from a single line or raw bytes (the pytest
plugin, interactive use).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from emulator.errors import AssemblyError, UsageError
from emulator.skipcheck.corpus import (BASE, CROSS, Form, LineError, StoreInfo, Variant, apply_words,
                                       assemble_body, line_problem, parse_corpus, riprel_body, store_info,
                                       variant_na)
from emulator.skipcheck.layout import HIGH, INSN_OFF

# keystone assembles every line where the HIGH layout puts the instruction
# (rip-relative displacements are patched per run anyway)
ASSEMBLE_AT = HIGH[0] + INSN_OFF


@dataclass
class Instruction:
    """One corpus form crossed with one prefix variant."""
    form: Form
    variant: Variant
    code: bytes                   # plain encoding
    info: StoreInfo
    riprel: bytes | None = None   # rip-relative encoding (placeholder disp) or None
    riprel_info: StoreInfo | None = None
    riprel_na: str = ""
    pad: int = 0                  # redundant ds prefixes added (len15/len16)
    riprel_pad: int = 0

    @property
    def name(self) -> str:
        return self.form.text if self.variant.name == "base" else f"{self.form.text} [{self.variant.name}]"

    @property
    def source_words(self) -> tuple[str, ...]:
        return self.form.words + self.variant.words


def build_instructions(forms: list[Form], cross: bool) -> tuple[list[Instruction], list[LineError], Counter]:
    """Assemble every form, check it, cross it with prefixes."""
    code_addr = ASSEMBLE_AT
    out: list[Instruction] = []
    errors: list[LineError] = []
    skipped_variants: Counter = Counter()
    for form in forms:
        try:
            kbytes = assemble_body(form.body, code_addr)
        except AssemblyError as e:
            msg = str(e).split(": ", 1)[-1]
            errors.append(LineError(form.line, form.text, f"does not assemble: {msg}"))
            continue
        except Exception as e:         # keystone itself failing: never crash the run
            errors.append(LineError(form.line, form.text, f"does not assemble: {type(e).__name__}: {e}"))
            continue
        base = apply_words(kbytes, form.words)
        why = line_problem(base)
        if why:
            errors.append(LineError(form.line, form.text, why))
            continue
        info = store_info(base, code_addr)
        if isinstance(info, str):
            errors.append(LineError(form.line, form.text, info))
            continue
        rbody = None if form.raw_bytes else riprel_body(form.body)
        rbytes = None
        rna = ""
        if info.kind != "explicit":
            rna = "no explicit memory destination"
        elif info.moffs and info.dest.segment not in ("fs", "gs"):
            rna = "the address is in the instruction"
        elif form.raw_bytes:
            rna = "raw bytes"
        elif rbody is None:
            rna = "not exactly one memory operand to make rip-relative"
        else:
            try:
                rbytes = apply_words(assemble_body(rbody, code_addr), form.words)
            except AssemblyError as e:
                rna = f"keystone: {str(e).split(': ', 1)[-1]}"
        variants = [BASE] + (list(CROSS) if cross else [])
        for v in variants:
            if v is not BASE:
                na = variant_na(v, base, info)
                if na:
                    skipped_variants[f"{v.name}: {na}"] += 1
                    continue
            code = v.apply(base)
            if code is None:
                skipped_variants[f"{v.name}: no room"] += 1
                continue
            # redundant ds padding changes nothing but the length (capstone may
            # not decode a padded 66 e8 rel16: it reads rel32, past 15 bytes)
            vinfo = info if v is BASE or v.pad_to else store_info(code[:15], code_addr)
            why = None if v.pad_to and v.pad_to > 15 else (
                vinfo if isinstance(vinfo, str) else line_problem(code))
            if why:
                # the crafting rules should never get here: make it visible
                errors.append(LineError(form.line, f"{form.text} [{v.name}]",
                                        f"prefix variant {code.hex(' ')}: {why}"))
                continue
            ins = Instruction(form, v, code, vinfo, pad=len(code) - len(apply_words(base, v.words)))
            if rbytes is not None:
                rcode = v.apply(rbytes)
                if rcode is not None:
                    ins.riprel_pad = len(rcode) - len(apply_words(rbytes, v.words))
                rinfo = store_info(rcode[:15], code_addr) if rcode and len(rcode) <= 15 else None
                if v.pad_to and not isinstance(rinfo, StoreInfo) and rcode and len(rcode) <= 15:
                    rinfo = store_info(apply_words(rbytes, v.words), code_addr)
                if rcode is None:
                    ins.riprel_na = "no room for the padding"
                elif v.pad_to and v.pad_to > 15:
                    ins.riprel_na = "16 bytes: refused before any access"
                elif isinstance(rinfo, str) or rinfo is None or not (rinfo.dest and rinfo.dest.rip):
                    ins.riprel_na = "no rip-relative form"
                else:
                    ins.riprel, ins.riprel_info = rcode, rinfo
            else:
                ins.riprel_na = rna
            out.append(ins)
    return out, errors, skipped_variants


def _as_line(insn: str | bytes) -> str:
    if isinstance(insn, (bytes, bytearray)):
        if not insn:
            raise UsageError("no instruction bytes")
        return ".byte " + ", ".join(f"{b:#04x}" for b in insn)
    text = insn.strip()
    if not text or "\n" in text:
        raise UsageError(f"{insn!r}: give exactly one instruction")
    return text


def instruction(insn: str | bytes, variant: str = "base") -> Instruction:
    """An Instruction from one corpus line (Intel syntax, prefix words
    allowed) or from raw bytes; UsageError with the reason otherwise."""
    line = _as_line(insn)
    forms, errors = parse_corpus(line)
    if errors:
        raise UsageError(f"{line}: {errors[0].error}")
    built, errors, _ = build_instructions(forms, cross=variant != "base")
    if errors:
        raise UsageError(f"{line}: {errors[0].error}")
    for ins in built:
        if ins.variant.name == variant:
            return ins
    raise UsageError(f"{line}: prefix variant {variant!r} does not apply")
