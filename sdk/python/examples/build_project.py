"""Build a tiny C project in a disposable microVM: python3 examples/build_project.py [template]"""

import os
import sys

sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # the SDK, if not installed
from kiln import Sandbox  # noqa: E402

HELLO_C = '#include <stdio.h>\nint main(void) { puts("hello from the microVM"); return 0; }\n'
BUILD_SH = "set -e\ncd /src\ncc -O2 -Wall -o hello hello.c\n./hello\n"

template = sys.argv[1] if len(sys.argv) > 1 else "base"
with Sandbox.create(template=template, ttl_seconds=300) as sbx:  # killed when the block ends
    sbx.filesystem.write("/src/hello.c", HELLO_C)
    sbx.filesystem.write("/src/build.sh", BUILD_SH, mode=0o755)
    result = sbx.exec("sh /src/build.sh", timeout_seconds=120)  # hard timeout: exit 124
    print(result.stdout, end="")
    print(result.stderr, end="", file=sys.stderr)
sys.exit(result.exit_code)
