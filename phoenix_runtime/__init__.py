"""phoenix_runtime: everything that runs inside the Triton server, in the standard library and numpy.

| module | one job |
|---|---|
| `manifest` | served model names, artifact records, `manifest.json` (read, write, verify), the client config |
| `request` | `Limits` and THE check of a request (`check_request`, `check_shapes`, the value rules) |
| `hashing` | raw ids -> hash values per entity |
| `scoring` | home-mixer's score names, sources and weights, and its scoring math |
| `batching` | requests of different candidate counts in one engine call (hash-0 padding, exact by isolation) |
| `topk` | exact top-k retrieval over a corpus: the definition, and the pruned search that returns it fast |
| `retrieval` | the served corpus: its files, its search, a retrieval answer |
| `host` | the engine host: a served engine model with its hash tables (check, batch, gather, run) |
| `pipeline` | the release's whole pipeline as one request (raw ids -> retrieval -> ranking -> scores) |
| `backend` | the Triton Python-backend glue the model.py files share (requests, responses, calls to other models) |
| `engines` | every built engine behind one interface (ONNX Runtime, torch, AOTInductor, TensorRT; imported lazily) |

The Triton `model.py` files, the build (`export`), the launcher and client (`serving`) and the benchmarks
import these modules by this name; the build copies the package whole beside each Python-backend model, so a
built repository serves from any folder without this project installed. Nothing here imports the rest of the
project; engine runtimes are imported inside the functions that need them.
"""
