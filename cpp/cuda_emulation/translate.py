"""Rewrite a .cu file as C++ for the host emulator (see include/pdl_emu/emulator.h).

Three rewrites, nothing else changes (line numbers are kept, so emulator messages point at the
.cu source):
  kernel<Args><<<grid, block, shared, stream>>>(args)
      -> ::pdl_emu::launch(kernel<Args>, "kernel", grid, block, shared, stream)(args)
  extern __shared__ T name[];
      -> T* name = reinterpret_cast<T*>(::pdl_emu::dynamic_shared());
  __shared__ T name[N];
      -> static T name[N]; ::pdl_emu::shared_variable(&name, sizeof(name));

Usage: python translate.py input.cu output.cpp
"""

from __future__ import annotations

import re
import sys

EXTERN_SHARED = re.compile(r"extern\s+__shared__\s+([\w:\s]+?)\s+(\w+)\s*\[\s*\]\s*;")
STATIC_SHARED = re.compile(r"(?<!extern )__shared__\s+([\w:\s]+?)\s+(\w+)(\s*\[[^\]]*\])?\s*;")


def _kernel_start(text: str, end: int) -> int:
    """Start of the kernel expression that ends just before `end` (before '<<<')."""
    i = end
    while i > 0 and text[i - 1].isspace():
        i -= 1
    if text[i - 1] == ">":  # template arguments: walk back to the matching '<'
        depth = 0
        while i > 0:
            i -= 1
            if text[i] == ">":
                depth += 1
            elif text[i] == "<":
                depth -= 1
                if depth == 0:
                    break
    while i > 0 and (text[i - 1].isalnum() or text[i - 1] in "_:"):
        i -= 1
    return i


def translate(text: str) -> str:
    text = EXTERN_SHARED.sub(
        lambda m: (
            f"{m.group(1)}* {m.group(2)} = "
            f"reinterpret_cast<{m.group(1)}*>(::pdl_emu::dynamic_shared());"
        ),
        text,
    )
    # Static shared variables are function statics that the emulator poisons at every block's
    # start (registered the first time a thread passes the declaration).
    text = STATIC_SHARED.sub(
        lambda m: (
            f"static {m.group(1)} {m.group(2)}{m.group(3) or ''}; "
            f"::pdl_emu::shared_variable(&{m.group(2)}, sizeof({m.group(2)}));"
        ),
        text,
    )
    out = []
    pos = 0
    while (open_at := text.find("<<<", pos)) >= 0:
        close_at = text.find(">>>", open_at)
        if close_at < 0:
            raise SystemExit(f"translate.py: unmatched '<<<' at offset {open_at}")
        start = _kernel_start(text, open_at)
        kernel = text[start:open_at].strip()
        if not kernel:
            raise SystemExit(f"translate.py: no kernel before '<<<' at offset {open_at}")
        name = re.sub(r"<.*", "", kernel, flags=re.S).split("::")[-1]
        config = text[open_at + 3 : close_at]
        out.append(text[pos:start])
        out.append(f'::pdl_emu::launch({kernel}, "{name}", {config})')
        pos = close_at + 3
    out.append(text[pos:])
    return "".join(out)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as f:
        source = f.read()
    result = f'#line 1 "{argv[1]}"\n' + translate(source)
    with open(argv[2], "w", encoding="utf-8") as f:
        f.write(result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
