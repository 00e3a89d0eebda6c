"""The CPUID instruction, and what it says about the XSAVE layout.

Python has no way to run CPUID, so a 32-byte function of ours is copied into an
executable anonymous page once and called through ctypes:
    void cpuid(u32 leaf, u32 subleaf, u32 out[4])    (eax, ebx, ecx, edx)

`xstate_layout()` gives each user XSAVE component's offset and size in the standard
(non-compacted) layout that ptrace's NT_X86_XSTATE uses: CPUID leaf 0xD, subleaf = the
component, EAX = size, EBX = offset. The offsets differ between CPUs (an AVX-512 CPU
without MPX puts the opmask registers at 832, one with MPX at 1088).
"""
from __future__ import annotations

import ctypes
import functools
import mmap

_CODE = bytes.fromhex(
    "53"          # push rbx
    "89f8"        # mov eax, edi
    "89f1"        # mov ecx, esi
    "4989d0"      # mov r8, rdx
    "0fa2"        # cpuid
    "418900"      # mov [r8], eax
    "41895804"    # mov [r8+4], ebx
    "41894808"    # mov [r8+8], ecx
    "4189500c"    # mov [r8+12], edx
    "5b"          # pop rbx
    "c3")         # ret
_FN = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32 * 4))


@functools.cache
def _function():
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(_CODE)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(page))
    return page, _FN(addr)          # the page stays mapped as long as the function lives


def cpuid(leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
    """(eax, ebx, ecx, edx) of CPUID(leaf, subleaf)."""
    out = (ctypes.c_uint32 * 4)()
    _function()[1](leaf, subleaf, ctypes.byref(out))
    return out[0], out[1], out[2], out[3]


@functools.cache
def xstate_layout() -> dict[int, tuple[int, int]]:
    """{component bit: (offset, size)} of every component above SSE this CPU's XSAVE knows
    (CPUID 0xD.0 EDX:EAX lists the supported ones; what the kernel enables is XCR0, which
    the NT_X86_XSTATE buffer itself carries)."""
    eax, _, _, edx = cpuid(0xD, 0)
    supported = eax | edx << 32
    out = {}
    for bit in range(2, 63):
        if supported >> bit & 1:
            size, offset, _, _ = cpuid(0xD, bit)
            if size:
                out[bit] = (offset, size)
    return out
