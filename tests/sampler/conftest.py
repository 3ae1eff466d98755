import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import sampler  # noqa: E402,F401  - sets OPENBLAS_CORETYPE before anything imports faiss
