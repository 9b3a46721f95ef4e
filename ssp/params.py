"""Every knob of the pipeline: one typed dataclass per ``params.yaml`` section.

The defaults below ARE the demo profile (2 CPU cores, minutes, the generated benchmark)
and are documented here once; ``conf/config.yaml`` holds the same values for DVC's Hydra
composition (``tests/ops/test_params.py`` keeps the two equal). A profile is a set of
overrides, ``conf/profile/{name}.yaml`` (``paper``: the paper's setting). ``params.yaml``
is the composed result that the stages actually read, so ``dvc exp show`` and ``dvc params
diff`` show what a run used:

    dvc exp run -S profile=paper        # DVC composes conf/ with profile=paper into params.yaml
    ssp params --profile paper          # the same composition, for plain `dvc repro` / the flows

Every command, flow and deploy script reads params through :func:`load_params` (file,
optional profile, ``section.key=value`` overrides) and gets a :class:`Params`; a stage
reads only its own section (``params.flow``, ``params.stage(2)``, ...).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from ssp import paper
from ssp.errors import DataError, SSPError
from ssp.fileio import write_text

log = logging.getLogger(__name__)

DEFAULT_PARAMS = Path("params.yaml")
CONF_DIR = "conf"  # beside params.yaml: config.yaml + profile/{name}.yaml (Hydra layout)
DEFAULT_PROFILE = "demo"


# ---------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------
@dataclass
class DataParams:
    """The dataset every stage reads, and the generated benchmark (``ssp synth``)."""

    root: str = "data/synth"  # point it at a real AVSBench copy
    layout: str = "auto"  # auto | semantic | object
    seed: int = 0  # ssp synth
    size: str = "demo"  # ssp synth: tiny | demo | small
    classes: int = 8  # ssp synth: K sounding classes
    image_size: int = 64  # ssp synth: frame side in pixels


@dataclass
class FlowParams:
    """``ssp flow``: optical flow -> per-frame magnitude (paper eq. 1) -> binary M_O."""

    method: str = "dis"  # dis | raft | perceiver (raft/perceiver need weights)
    preset: str = "medium"  # DIS preset: ultrafast | fast | medium
    # RAFT / Perceiver IO weights: a local path, or a hub id org/name@revision (ssp.hub).
    # perceiver: a PerceiverForOpticalFlow save_pretrained folder / repo (the paper's:
    # deepmind/optical-flow-perceiver); raft: a torchvision state dict file, or a repo holding one
    weights: str = ""
    variant: str = "auto"  # RAFT: small | large | auto (from the weights' layer shapes)
    size: int | None = None  # flow computed on frames resized to size x size (None: native); outputs at frame size
    device: str = "auto"  # RAFT / Perceiver IO: auto (cuda when present) | cpu | cuda | cuda:N
    rule: str = "otsu"  # threshold rule: fixed | fraction_of_max | otsu
    value: float = 0.0  # the rule's value (pixels, or fraction of max); unused by otsu
    min_magnitude: float = 1.0  # pixels moving less than this are never in M_O (keeps still frames empty)
    cleanup: int = 0  # morphological opening size; 0 = off


@dataclass
class PromptsParams:
    """``ssp prompts``: the MLLM's A1 (description) and A2 (sounding nouns), paper §4.2."""

    backend: str = "scene"  # hf | openai | scene (generated benchmark only) | none
    question_variant: str = "d"  # Q1 wording of paper Fig. 7 (d = the paper's final Q1)
    # hf: local model folder or hub id org/name@revision (ssp.hub); openai: served model name
    model: str = ""
    frames_per_video: int = 4  # frames shown to the MLLM, spread evenly (>= the video's: all)
    max_new_tokens: int = 256  # answer length limit (hf, openai)
    quality: float = 1.0  # scene backend: answer quality (paper Fig. 6 study)
    seed: int = 0  # scene backend: degradation draws
    # hf backend. hf_api: chat_template (AutoModelForImageTextToText + the processor's chat
    # template) | model_chat (AutoModel + the repository's own model.chat(msgs, tokenizer),
    # MiniCPM-o / MiniCPM-V) | auto (model_chat when config.json maps AutoModel to remote code)
    hf_api: str = "auto"
    trust_remote_code: bool = False  # run the model repository's Python code (MiniCPM-o needs it)
    device: str = "auto"  # auto (CUDA + bf16 when present, else CPU) | cpu | cuda | cuda:N
    chat_options: dict[str, Any] = field(default_factory=dict)  # model_chat: extra keyword arguments of model.chat
    # openai backend: the endpoint, the NAME of the environment variable holding the API key
    # ("" = no key; the key itself never goes into params), timeouts (s) and retries
    base_url: str = "http://localhost:8000/v1"
    api_key_env: str = "OPENAI_API_KEY"
    connect_timeout: float = 10.0
    read_timeout: float = 300.0
    max_retries: int = 4  # retries on 5xx / 429 / timeouts / connection errors, exponential backoff
    backoff: float = 1.0  # first retry delay (s); doubles each retry, plus up to 100% jitter
    give_up_after: int = 3  # after this many questions failed in a row, stop asking (0: never)


@dataclass
class ModelParams:
    """Architecture, read by both stages (the SSP switches are the ``ssp`` section)."""

    size: str = "tiny"  # tiny (CPU, demo) | paper (Swin-B Mask2Former as AAVS)
    image_size: int | None = None  # model input side in pixels (None: the size preset's, tiny 64, paper 384)
    # M_GT of eq. 2 in training: stage1 (stage 1's masks, as at test) | gt (the paper's wording)
    premask_train_source: str = "stage1"
    premask_test_source: str = "stage1"  # ... and at test, where the GT is unknown: stage1 | flow | all
    # SSP's components (SSPConfig documents each; None: the size preset's, tiny | paper):
    # L'_mask: mask (paper: BCE + dice vs M_Post) | recall (tiny: one-sided) | head (extra prediction)
    post_mask_form: str | None = None
    stepping_stone_test: str | None = None  # stage 2's stone at test: binary (both presets) | soft
    stepping_stone_train: str | None = None  # ... in training: gt (both presets; AAVS) | stage1
    text_visual_tokens: str | None = None  # VTA's visual tokens: clip (paper) | pixel_decoder (tiny)
    # how the text reaches the segmentation: cross_attention (both presets) | residual
    text_injection: str | None = None
    num_points: int | None = None  # points sampled per mask in the loss (None: the size preset's)
    # audio besides the audio-aware queries: none (AAVS, the paper preset) | similarity (an
    # audio-pixel match added to the mask logits; SSPConfig documents it). Both stages.
    audio_fusion: str | None = "similarity"
    # Per stage on the generated benchmark (bench/README.md, Mask resolution and Stage 2 on these
    # stepping stones; SSPConfig documents each; the paper profile sets them to null = the paper
    # preset's: off, Mask2Former's 1/4):
    stage1_class_aux: float | None = 3.0  # SSPConfig.class_aux of stage 1: class-level loss + class match (0 = off)
    stage2_class_aux: float | None = 3.0  # the same in stage 2
    stage1_class_match_gain: float | None = 4.0  # initial gain of that match's mask-logit offset
    stage1_mask_stride: int | None = 2  # stage 1's mask-feature stride: 4 (Mask2Former) | 2 | 1
    stage2_mask_stride: int | None = 2  # the same in stage 2
    # stage 2's class scores: queries (Mask2Former's inference) | codes (split by the class codes; needs stage2_class_aux)
    stage2_class_readout: str | None = "codes"
    # pretrained weights: a local path or a hub id "org/name@revision" (ssp/hub.py);
    # "" = random init; text_model None = the packaged MiniLM (the demo's), clip_model None =
    # none (VTA then needs text_visual_tokens: pixel_decoder). The paper profile names BERT-base
    # and CLIP ViT-B/16 (conf/profile/paper.yaml); the paper preset itself names no weights
    text_model: str | None = None
    clip_model: str | None = None
    vggish_weights: str = ""
    backbone_weights: str = ""
    mask2former_weights: str = ""
    # the paper preset refuses to build without its pretrained weights; true = random init on purpose
    allow_random_init: bool | None = None  # None: the preset's (tiny true, paper false)
    # AAVS's training recipe (SSPConfig documents each; None: the size preset's -- tiny: off,
    # paper: frozen Mask2Former with adapters, drop path 0.3)
    freeze_pretrained: bool | None = None  # freeze the Mask2Former parts but trainable_pretrained
    trainable_pretrained: list[str] | None = None  # name fragments that still train (None: AAVS's per stage)
    swin_adapters: bool | None = None  # bottleneck adapters in every Swin block (trained from phase 2)
    decoder_adapters: str | None = None  # none | replace (AAVS) | residual (starts as the identity)
    adapter_reduction: int | None = None  # adapter width = dim // this (AAVS 4)
    drop_path_rate: float | None = None  # Swin stochastic depth (paper 0.3)


@dataclass
class SSPParams:
    """The SSP additions of the main stage-2 model (paper §4); ablation rows override them."""

    pre_mask: bool = True  # eq. 2: M_Pre multiplied into the frames
    text: str = "vta"  # none | att | vta
    post_mask: bool = True  # L'_mask against M_O ∩ M_GT
    lambda_post: float = 10.0  # λ'_mask (eq. 5)


@dataclass
class LaunchParams:
    """How training processes are launched (``ssp launch``; section ``train``)."""

    gpus: int | str = 1  # > 1: torchrun --nproc-per-node; "auto": every visible GPU
    nodes: int = 1  # > 1: multi-node rendezvous below
    rdzv_endpoint: str = "127.0.0.1:29400"
    rdzv_id: str = "ssp"
    rdzv_backend: str = "c10d"
    max_restarts: int = 0


@dataclass
class TrainParams:
    """One training stage (sections ``train1`` and ``train2``)."""

    # stage 1's demo schedule: the class codes and the audio match form from ~8 epochs on, not in 3
    # (bench/README.md, Class-level signal and Mask resolution)
    epochs: int = 12
    batch_size: int = 4  # videos per step (per process under DDP)
    lr: float = 1e-3
    weight_decay: float = 0.05
    lr_step_epoch: int | None = 10  # LR x lr_gamma once this many epochs are done (paper: 15 S4/MS3, 20 AVSS)
    lr_gamma: float = 0.1
    grad_clip: float = 0.0  # max grad norm; 0 = off
    num_workers: int = 1
    seed: int = 0
    step_checkpoint_every: int = 0  # resumable mid-epoch checkpoint every N steps; 0 = off
    keep_last: int | None = 1  # epoch checkpoints kept (+ best.safetensors, + a newer step one); null = all
    log_every: int = 10  # steps between loss read-outs (each is a device sync)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    subsets: list[str] | None = None  # None: stage 1 all subsets, stage 2 all semantic subsets
    max_frames: int | None = 5  # keep the first N frames of each video (None = all)
    labelled_only: bool = True  # drop unlabelled frames from training batches (no loss on them)
    val_every: int = 1  # validate every N epochs (and always after the last)
    val_batch_size: int = 4
    threads: int | None = None  # torch intra-op threads (None = torch's default)
    deterministic: bool = True  # torch.use_deterministic_algorithms (warn only where impossible)
    overlays: int = 2  # prediction overlay PNGs logged for the best checkpoint
    cache_in_memory: bool = True  # decode the train set once into RAM (small data); then no loader workers
    # AAVS's phase switch: before epoch index phase2_epoch (this many epochs done) reload the best
    # checkpoint, re-initialise and unfreeze the Swin adapters, new AdamW at phase2_lr (paper:
    # 15 S4/MS3, 20 AVSS, as AAVS's epochs//2 and //3); null = one phase
    phase2_epoch: int | None = None
    phase2_lr: float = 1e-4

    def check(self, where: str) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise SSPError(f"params {where}: epochs and batch_size must be >= 1")
        if self.keep_last is not None and self.keep_last < 1:
            raise SSPError(f"params {where}: keep_last must be >= 1 (the checkpoint a resume reads) or null (all)")
        if self.phase2_epoch is not None and self.phase2_epoch < 1:
            raise SSPError(f"params {where}: phase2_epoch must be >= 1 (epochs done before the switch) or null")


def _train2() -> TrainParams:
    # stage 2 (the main model, every AVSS ablation cell), demo schedule: every semantic
    # subset, as AAVS trains AVSS (v1s + v1m + v2: 440 frames, 5 epochs, LR step after 4; v2 alone
    # for 12 epochs, the same number of steps, spread 6x wider over seeds), and the gradient norm
    # clipped at 1: L'_mask's spikes (λ' = 10 on a log loss) derailed whole runs (bench/README.md,
    # Class codes in stage 2, Class read-out)
    return TrainParams(epochs=5, batch_size=2, lr_step_epoch=4, grad_clip=1.0, max_frames=3, subsets=None)


@dataclass
class EvaluateParams:
    split: str = "test"
    fscore_batch_videos: int = 4  # official AVSBench batch-mode F-score: 4 videos per batch


@dataclass
class AblationParams:
    """Paper Tables 1-2: per row and seed, a stage-2 run (DVC matrix ``ablation``, the AVSS
    columns) and a stage-1 run on v1s + v1m (matrix ``ablation_avs``, the S4/MS3 columns)."""

    rows: list[str] = field(default_factory=lambda: list(paper.ROWS))
    seeds: list[int] = field(default_factory=lambda: [0])
    # rows with a stage-1 (S4/MS3) cell; the demo keeps Table 1's pair (1-2.5 min per cell on
    # 2 CPU cores), the paper profile has all seven
    stage1_rows: list[str] = field(default_factory=lambda: list(paper.TABLE1.values()))
    lambda_post: float = 10.0  # λ'_mask of the rows with the post-mask (the paper's; the sweep varies it)


@dataclass
class SweepParams:
    """Paper Fig. 5: λ'_mask of the full model, swept on MS3 (DVC foreach ``sweep``: one
    stage-1 ``full`` model per value, trained as the ``ablation_avs`` cells)."""

    lambda_post: list[float] = field(default_factory=lambda: [1, 5, 10, 20, 50])


@dataclass
class PipelineParams:
    work_pool: str = "ssp-process"  # Prefect work pool of the scheduled `retrain` deployment
    work_pool_type: str = "process"  # process | docker | kubernetes (infra/prefect/ templates)
    retries: dict[str, int] = field(default_factory=lambda: {"prompts": 2})  # Prefect task retries per stage group
    # stages the reproduce flow runs at once when none waits for another (flows/dvc_stages.py:
    # stage_plan), each command with CPU count / jobs torch threads; None = auto: 1 on a
    # machine with a CUDA device (the stages would share it), else min(CPU count, 4). Two
    # tiny-model trainings of 1 thread each get through 1.6x the work of one of 2 threads on
    # 2 cores (docs/design.md, "Stages side by side")
    jobs: int | None = None


@dataclass
class Params:
    """All sections; ``profile`` names the profile the values were composed with."""

    profile: str = DEFAULT_PROFILE
    data: DataParams = field(default_factory=DataParams)
    flow: FlowParams = field(default_factory=FlowParams)
    prompts: PromptsParams = field(default_factory=PromptsParams)
    model: ModelParams = field(default_factory=ModelParams)
    ssp: SSPParams = field(default_factory=SSPParams)
    train: LaunchParams = field(default_factory=LaunchParams)
    train1: TrainParams = field(default_factory=TrainParams)
    train2: TrainParams = field(default_factory=_train2)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    ablation: AblationParams = field(default_factory=AblationParams)
    sweep: SweepParams = field(default_factory=SweepParams)
    pipeline: PipelineParams = field(default_factory=PipelineParams)

    def stage(self, stage: int) -> TrainParams:
        """``train1`` or ``train2``."""
        if stage not in (1, 2):
            raise SSPError(f"stage must be 1 or 2, got {stage}")
        return self.train1 if stage == 1 else self.train2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | Path = "params") -> Params:
        """Typed sections from a (composed) params mapping; a missing section or key takes
        its default; an unknown section or key, or a value of the wrong type, is an error
        naming ``source`` (the file, or the ``--set`` overrides)."""
        data = dict(data or {})
        sections = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - sections)
        if unknown:
            hint = " (params.yaml is composed from conf/ now: run `ssp params`)" if "profiles" in unknown else ""
            raise DataError(source, f"unknown params sections {unknown} (known: {sorted(sections)}){hint}")
        base = cls()
        values: dict[str, Any] = {"profile": str(data.get("profile") or DEFAULT_PROFILE)}
        for name in sections - {"profile"}:
            values[name] = _section(getattr(base, name), data.get(name), source, name)
        params = cls(**values)
        params.train1.check(f"{source}: train1")
        params.train2.check(f"{source}: train2")
        return params


# the SSP switches of the main model were `model.*` keys before they got their own section
_MOVED_KEYS = {("model", k): f"ssp.{k}" for k in ("pre_mask", "text", "post_mask", "lambda_post")}
_MOVED_KEYS[("model", "text_model_path")] = "model.text_model"  # renamed: a hub id or a path


def _section(default: Any, given: Mapping[str, Any] | None, source: str | Path, name: str) -> Any:
    if given is None:
        return default
    if not isinstance(given, Mapping):
        raise DataError(source, f"section {name} must be a mapping, got {given!r}")
    known = {f.name for f in dataclasses.fields(default)}
    unknown = sorted(set(given) - known)
    if unknown:
        moved = [f"{name}.{k} is {_MOVED_KEYS[(name, k)]}" for k in unknown if (name, k) in _MOVED_KEYS]
        hint = f" ({'; '.join(moved)} now)" if moved else ""
        raise DataError(source, f"unknown keys {unknown} in section {name} (known: {sorted(known)}){hint}")
    hints = typing.get_type_hints(type(default))
    values = {key: _typed(value, hints[key], source, f"{name}.{key}") for key, value in given.items()}
    return dataclasses.replace(default, **values)


def _typed(value: Any, hint: Any, source: str | Path, key: str) -> Any:
    """``value`` as the type ``hint`` says, or a DataError naming ``key``. A float knob
    written as an integer or in exponent form (``--set train2.lr=1e-3``, which YAML reads as
    a string) becomes a float: values enter stamps, tags and configs, and must not depend
    on the spelling."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None and type(None) in options:
        return None
    for option in options:
        origin = typing.get_origin(option) or option
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option is float and isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                continue
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option in (str, bool) and type(value) is option:
            return value
        if origin in (list, dict) and isinstance(value, origin):
            return value
    wanted = " or ".join("null" if o is type(None) else getattr(o, "__name__", str(o)) for o in options)
    raise DataError(source, f"{key} must be {wanted}, got {value!r}")


# ---------------------------------------------------------------------------------------
# Loading: file, profile, overrides
# ---------------------------------------------------------------------------------------
def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train2.epochs=3"`` -> (["train2", "epochs"], 3); the value is parsed as YAML."""
    if "=" not in text:
        raise SSPError(f"override {text!r} is not KEY=VALUE")
    key, value = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(value)


def apply_overrides(params: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    out = copy.deepcopy(dict(params))
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return out


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise DataError(path, f"not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise DataError(path, "expected a mapping of params sections")
    return data


def compose(conf_dir: str | Path, profile: str = DEFAULT_PROFILE) -> dict[str, Any]:
    """``conf/config.yaml`` with ``profile/{profile}.yaml`` merged over it: what DVC's Hydra
    composition writes into params.yaml for ``dvc exp run -S profile=NAME``."""
    # optional path (only a profile switch composes): hydra costs ~0.2 s at every stage's start
    from hydra import compose as hydra_compose  # noqa: PLC0415
    from hydra import initialize_config_dir  # noqa: PLC0415
    from omegaconf import OmegaConf  # noqa: PLC0415

    conf_dir = Path(conf_dir).resolve()
    if not (conf_dir / "config.yaml").is_file():
        raise DataError(
            conf_dir,
            "no conf/config.yaml here: profiles are composed from the conf/ folder "
            "beside the params file (the repository's)",
        )
    choices = sorted(p.stem for p in (conf_dir / "profile").glob("*.yaml"))
    if profile not in choices:
        raise DataError(conf_dir / "profile", f"no profile {profile!r} (profiles: {', '.join(choices)})")
    with initialize_config_dir(config_dir=str(conf_dir), version_base=None):
        cfg = hydra_compose(config_name="config", overrides=[f"profile={profile}"])
    return OmegaConf.to_container(cfg, resolve=True)


def load_params(path: str | Path | None = None, profile: str | None = None, overrides: Iterable[str] = ()) -> Params:
    """The params a command runs with: ``path`` (default params.yaml; the defaults of this
    module when it does not exist), or, when ``profile`` names another profile than the
    file's, that profile composed from ``conf/`` beside the file (the file's own values are
    then not used: profiles are compositions of conf/, as `dvc exp run -S profile=NAME`
    makes them); then ``overrides``. ``profile=NAME`` among the overrides selects the
    profile too."""
    path = Path(path) if path is not None else DEFAULT_PARAMS
    overrides = list(overrides)
    chosen = [str(parse_override(o)[1]) for o in overrides if parse_override(o)[0] == ["profile"]]
    overrides = [o for o in overrides if parse_override(o)[0] != ["profile"]]
    profile = profile or (chosen[-1] if chosen else None)
    raw = read_yaml(path) if path.exists() else {}
    if profile is not None and profile != raw.get("profile", DEFAULT_PROFILE):
        raw = compose(path.parent / CONF_DIR, profile)
    params = Params.from_dict(raw, source=path)
    if not overrides:
        return params
    return Params.from_dict(apply_overrides(raw, overrides), source="--set " + " --set ".join(overrides))


def write_params(params: Mapping[str, Any], path: str | Path = DEFAULT_PARAMS) -> Path:
    """Write a composed params mapping as params.yaml (sections in dataclass order)."""
    header = (
        "# GENERATED by `ssp params` / `dvc exp run -S profile=...` from conf/ (edit conf/, not this\n"
        "# file). The values the stages read; every knob is documented in ssp/params.py.\n"
    )
    write_text(path, header + yaml.safe_dump(dict(params), sort_keys=False, default_flow_style=False))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)  # a tracked file others read (atomic writes make it 0600)
    return Path(path)


# ---------------------------------------------------------------------------------------
# The options every stage command shares
# ---------------------------------------------------------------------------------------
def add_params_arguments(parser: argparse.ArgumentParser, example: str, moved: Mapping[str, str] | None = None) -> None:
    """``--params FILE`` and the repeatable ``--set SECTION.KEY=VALUE`` (``example``: one
    override that makes sense for the command, shown in its help). A stage reads its knobs
    from its own section; what is not a param (where to write, workers, device, how to
    reach an endpoint) stays a flag of the command. ``moved``: former flags of the command
    that are params now (flag -> key); giving one is an error saying which ``--set``."""
    parser.add_argument(
        "--params",
        type=Path,
        default=DEFAULT_PARAMS,
        metavar="FILE",
        help=f"params file whose section(s) this command reads (default: {DEFAULT_PARAMS}; "
        "the defaults of ssp/params.py when it does not exist)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        dest="overrides",
        metavar="KEY=VALUE",
        help=f"override a param, e.g. --set {example} (repeatable)",
    )
    add_moved_flags(parser, moved or {})


def add_moved_flags(parser: argparse.ArgumentParser, moved: Mapping[str, str]) -> None:
    """Former flags that are params now (flag -> key): giving one is an error naming the
    ``--set`` that replaces it (for option groups shared by several commands)."""
    for flag, key in moved.items():
        parser.add_argument(flag, nargs="?", action=_MovedFlag, key=key, help=argparse.SUPPRESS)


class _MovedFlag(argparse.Action):
    """A flag that became a param: an error naming the ``--set`` that replaces it."""

    def __init__(self, option_strings: list[str], dest: str, key: str, **kwargs: Any):
        super().__init__(option_strings, dest, **kwargs)
        self.key = key

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        value = values if values is not None else "VALUE"
        parser.error(f"{option_string} is a param now: --set {self.key}={value} (or edit conf/config.yaml)")


def stage_params(args: argparse.Namespace, profile: str | None = None, extra: Iterable[str] = ()) -> Params:
    """The params a command runs with: ``--params`` with the ``--set`` overrides (then
    ``extra`` ones). The defaults stand in for a missing params.yaml, but a file named
    explicitly must exist (a typo must not run the demo defaults)."""
    if Path(args.params) != DEFAULT_PARAMS and not Path(args.params).exists():
        raise DataError(args.params, "params file not found (an empty file gives the defaults)")
    return load_params(args.params, profile=profile, overrides=[*args.overrides, *extra])


# ---------------------------------------------------------------------------------------
# CLI: ssp params
# ---------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--profile", default=DEFAULT_PROFILE, help="profile of conf/profile/ to compose (default: demo)"
    )
    parser.add_argument("--conf", type=Path, default=Path(CONF_DIR), help="Hydra config folder (default: conf)")
    parser.add_argument("--out", type=Path, default=DEFAULT_PARAMS, help="params file to write (default: params.yaml)")
    parser.add_argument(
        "--check", action="store_true", help="do not write: exit 1 if --out differs from the composition"
    )


def main(args: argparse.Namespace) -> int:
    composed = compose(args.conf, args.profile)
    Params.from_dict(composed, source=args.conf)  # fail on unknown keys before writing
    if args.check:
        current = read_yaml(args.out) if args.out.exists() else {}
        if current != composed:
            log.error(
                "%s is not the composition of %s with profile=%s: run `ssp params --profile %s`",
                args.out,
                args.conf,
                args.profile,
                args.profile,
            )
            return 1
        return 0
    write_params(composed, args.out)
    log.info("params: %s <- %s (profile %s)", args.out, args.conf, args.profile)
    return 0
