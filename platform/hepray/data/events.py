"""The event table every read task emits: one row per event (or per object), the columns named here.

Training, evaluation, `hepray predict` and the benchmarks read these names and no others.

- `entry` (int64): the event's entry number in its file's tree.
- `object` (int64): with `data.objects`, the object's index within its event (rows are objects,
  several may share an entry).
- `label` (int64): the class, for classifiers (from the file group or `data.label_branch`).
- `target` (float32): the regression target; (events, tracks, 3) for track momenta.
- `weight` (float32): the event weight, when the job has `data.weight`.
- `obs_<name>` (float32): each of `data.observers`, carried to the evaluation (NaN allowed).
- `pass_cut` (bool), `file_key` (int64): only for `hepray predict`, which scores every entry.
- one column per model input: a fixed-shape tensor, or for inputs that travel ragged, list
  columns `<name>__<column>` whose field metadata name the input (data.batches).
- `output` (float32, events x outputs): the model's raw output, added by inference.
"""

ENTRY, LABEL, TARGET, WEIGHT = "entry", "label", "target", "weight"
OBJECT, PASS_CUT, FILE_KEY, OUTPUT = "object", "pass_cut", "file_key", "output"
OBSERVER_PREFIX = "obs_"


def observer(name: str) -> str:
    return OBSERVER_PREFIX + name
