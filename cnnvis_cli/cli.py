"""The `cnnvis` command: `run` (a Hydra app), `list`, `demo train`, `--version`.

This is the only module that imports Hydra. Before a run starts, its overrides are composed once here, so a
typo in a config name, key or value ends as one line on standard error and exit code 2, before any heavy
work. Standard output carries only what a shell script needs: the run directory (or JSON lines).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from cnnvis_cli import __version__
from cnnvis_cli.errors import UserError, first_line, for_terminal, unknown_name
from cnnvis_cli.output import drop_stdout, emit, stdout_to_stderr
from cnnvis_cli.quick_exit import quick_exit
from cnnvis_cli.run_dir import discard_unused, refuse_if_held

GROUPS = ("model", "dataset", "selection", "technique")
LISTABLE = ("models", "techniques", "datasets", "selections", "layers", "metrics", "analyses")
USAGE = f"""usage: cnnvis COMMAND [ARGS]

commands:
  run [OVERRIDES]          run a model over a test set and explain its failures (Hydra flags work:
                           --help, --cfg job, -m, -cd DIR, --info); `cnnvis run` alone runs the demo
  list {{{'|'.join(LISTABLE)}}} [OVERRIDES]
                           show what can be chosen; `cnnvis list layers model=vgg16`
  visualise [OVERRIDES]    images that drive the model's classes, channels or neurons (feature visualisation):
                           `cnnvis visualise visualise.what=channels visualise.layer=features.6`
  export RUN_DIR --to fiftyone [--name NAME] [--overwrite]
                           the run as a FiftyOne dataset, to browse its failures in the FiftyOne app
  report RUN_DIR           rebuild a run's report.html; given a sweep's folder (outputs/multirun/...),
                           one page that compares its jobs side by side
  demo train [--help]      retrain the embedded demo model
  --version                print the version

example: cnnvis run model=resnet18 technique=[gradcam,scorecam] dataset=imagefolder dataset.root=~/data/val
"""


def config_dir() -> Path:
    """`conf/`: inside the package when installed from a wheel, beside it in a source checkout."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise RuntimeError(f"cnnvis configs not found beside {package}; reinstall the package")


SCHEMA_NAME = "cnnvis_schema"


def register_schema() -> None:
    """Put the typed schema in Hydra's ConfigStore; `conf/config.yaml` starts its defaults list with it,
    so every key of every group exists (and is type-checked) before the YAML options merge in."""
    from hydra.core.config_store import ConfigStore

    from cnnvis_cli.config import RunConfig

    ConfigStore.instance().store(name=SCHEMA_NAME, node=RunConfig)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    command, rest = (args[0], args[1:]) if args else ("--help", [])
    try:
        code = _command(command, rest)
        sys.stdout.flush()  # here, so that a reader that went away is noticed here, not at exit
        return code
    except BrokenPipeError:  # `cnnvis list techniques | head -1`: the reader has what it wanted
        drop_stdout()
        return 0
    except UserError as error:
        return fail(error)
    except KeyboardInterrupt as interruption:
        run_dir = getattr(interruption, "run_dir", None)
        hint = f"; finish it with: cnnvis run resume={run_dir}" if run_dir else ""
        print(f"cnnvis: interrupted{hint}", file=sys.stderr)
        return 130


def command_line() -> None:
    """The `cnnvis` command: `main`, then the process ends without the interpreter's slow teardown."""
    quick_exit(main())


def _command(command: str, rest: list[str]) -> int:
    if command in ("-h", "--help", "help"):
        sys.stdout.write(USAGE)
        return 0
    if command in ("-V", "--version"):
        print(f"cnnvis {__version__}")
        return 0
    if command == "run":
        return _run(rest)
    if command == "list":
        return _list(rest)
    if command == "report":
        return _report_command(rest)
    if command in ("visualise", "visualize"):
        return _visualise(rest)
    if command == "export":
        return _export(rest)
    if command == "demo":
        return _demo(rest)
    raise unknown_name("command", command, ("run", "list", "visualise", "export", "report", "demo"),
                       "cnnvis --help")


def fail(error: UserError) -> int:
    """Print a user's mistake as one line on standard error (after its traceback, with Hydra's usual
    HYDRA_FULL_ERROR=1); exit code 2."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        traceback.print_exception(error)
    print(f"cnnvis: error: {for_terminal(str(error))}", file=sys.stderr)
    return 2


def _report_command(argv: list[str]) -> int:
    from cnnvis_cli.report import build_report

    if len(argv) != 1 or argv[0].startswith("-"):
        raise UserError("usage: cnnvis report RUN_DIR (a run directory, or a sweep's folder of job directories)")
    print(build_report(Path(argv[0]).expanduser()))
    return 0


def _export(argv: list[str]) -> int:
    """`cnnvis export RUN_DIR --to fiftyone`: the dataset's name on standard output."""
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:  # one line, exit code 2, as every mistake
            raise UserError(f"{message}; usage: cnnvis export RUN_DIR --to fiftyone [--name NAME] [--overwrite]")

    parser = Parser(prog="cnnvis export", description="a run as a FiftyOne dataset")
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument("--to", required=True, choices=["fiftyone"])
    parser.add_argument("--name", help="the dataset's name (default: cnnvis-DATE-TIME of the run)")
    parser.add_argument("--overwrite", action="store_true", help="replace a dataset of that name")
    try:
        args = parser.parse_args(argv)
    except SystemExit:  # --help, printed
        return 0
    from cnnvis_cli.export import export_to_fiftyone

    with stdout_to_stderr():
        name, samples, heatmaps = export_to_fiftyone(Path(args.run_dir), args.name, args.overwrite)
    print(f"cnnvis: {samples} samples and {heatmaps} heatmaps in the FiftyOne dataset {name}; browse it with: "
          f"fiftyone app launch {name}", file=sys.stderr)
    emit([name])
    return 0


# --- run ------------------------------------------------------------------------------------------


RESUME_KEYS = ("devices", "rank_timeout", "progress")  # how a run is carried out, not what it computes


def resume_overrides(argv: list[str]) -> list[str]:
    """`resume=RUN_DIR` becomes the run's own overrides (from RUN_DIR/.hydra/overrides.yaml), continued in
    RUN_DIR itself, with any of RESUME_KEYS given beside it (`devices=4`); without resume=, `argv` as it is."""
    given = [arg for arg in argv if arg.startswith("resume=")]
    if not given:
        return argv
    folder = Path(given[-1].removeprefix("resume=")).expanduser().resolve()
    saved = folder / ".hydra" / "overrides.yaml"
    if not saved.is_file():
        raise UserError(f"cannot resume {folder}: it is not a cnnvis run directory (no .hydra/overrides.yaml)")
    others = [arg for arg in argv if not arg.startswith("resume=")]
    refused = [arg for arg in others if arg.partition("=")[0] not in RESUME_KEYS]
    if refused:
        raise UserError(f"resume= continues a run with its own config; drop the other arguments (only "
                        f"{', '.join(RESUME_KEYS)} may change): {' '.join(refused)}")
    import yaml

    original = [item for item in yaml.safe_load(saved.read_text()) or [] if not item.startswith("resume=")]
    return [*original, *others, f"resume={folder}", f"hydra.run.dir={folder}"]


def _run(argv: list[str]) -> int:
    register_schema()
    argv = prepare_overrides(resume_overrides(argv))  # a resumed run's saved overrides are prepared alike
    launcher = _override_value(argv, "hydra/launcher")
    if launcher in ("slurm", "submitit_slurm") and shutil.which("sbatch") is None:
        raise UserError(f"hydra/launcher={launcher} submits the sweep to SLURM, but this machine has no sbatch: "
                        "run it where SLURM is (a login node), or use hydra/launcher=submitit_local or joblib here")
    check_overrides(argv)  # after the cheap refusals: it composes every value of a sweep
    for key in ("hydra.run.dir", "hydra.sweep.dir"):
        folder = _override_value(argv, key)
        if folder:
            _require_makeable(key, Path(folder).expanduser().resolve())
    from cnnvis_cli import world as processes

    world = processes.current(float(_override_value(argv, "rank_timeout") or 60))  # torchrun, srun: many
    if world.size > 1:
        argv = rank_overrides(argv, world)
    run_dir = _override_value(argv, "hydra.run.dir")
    if run_dir and world.main:  # a folder that another run is writing, refused before Hydra writes its config there
        refuse_if_held(Path(run_dir).expanduser().resolve())
    existing = Path(run_dir).expanduser().resolve() if run_dir and Path(run_dir).expanduser().exists() else None
    app = _hydra_app(existing)
    saved_argv = sys.argv
    sys.argv = ["cnnvis run", *argv]
    try:
        app()
    except ValueError as error:  # Hydra's own refusal of a combination of flags
        world.abandon()
        if str(error).startswith("Only one of"):
            raise UserError(f"{first_line(str(error))}; drop the others") from error
        raise
    except BaseException:
        world.abandon()
        raise
    else:
        world.close()
    finally:
        sys.argv = saved_argv
    return 0


VISUALISE_DIR = "outputs/visualise/${now:%Y-%m-%d}/${now:%H-%M-%S}"


def _visualise(argv: list[str]) -> int:
    """`cnnvis visualise`: the run's config (model, dataset, device, seed) and its `visualise` section, in a
    folder of its own under outputs/visualise/."""
    if "-m" in argv or "--multirun" in argv:
        raise UserError("cnnvis visualise renders one config at a time; for several, call it once for each")
    register_schema()
    argv = prepare_overrides(argv)
    check_overrides(argv)
    folder = _override_value(argv, "hydra.run.dir")
    if folder:
        _require_makeable("hydra.run.dir", Path(folder).expanduser().resolve())
        refuse_if_held(Path(folder).expanduser().resolve())
    else:
        argv = [*argv, f"hydra.run.dir={VISUALISE_DIR}"]
    existing = Path(folder).expanduser().resolve() if folder and Path(folder).expanduser().exists() else None
    saved_argv = sys.argv
    sys.argv = ["cnnvis visualise", *argv, "hydra.callbacks={}", "hydra.help.app_name=cnnvis visualise"]
    try:
        _visualise_app(existing)()
    finally:
        sys.argv = saved_argv
    return 0


def _visualise_app(existing: Path | None):
    import hydra
    from omegaconf import DictConfig

    @hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")
    def cnnvis_visualise(cfg: DictConfig) -> None:
        import logging

        from hydra.core.hydra_config import HydraConfig

        from cnnvis_cli.checks import check_paths, load_run_config
        from cnnvis_cli.visualise.command import visualise

        output_dir = Path(HydraConfig.get().runtime.output_dir)
        try:
            run_config = load_run_config(cfg)
            check_paths(run_config)
            with stdout_to_stderr():
                summary = visualise(run_config, output_dir)
        except UserError as error:
            if output_dir.resolve() != existing:
                discard_unused(output_dir, below=Path.cwd())
            sys.exit(fail(error))
        logging.getLogger("cnnvis").info("%s; %.1f s on %s; results in %s", summary["headline"], summary["seconds"],
                                         summary["device"], output_dir)
        emit([str(output_dir)])

    return cnnvis_visualise


def rank_overrides(argv: list[str], world) -> list[str]:
    """The overrides of one rank of a run over many processes: the run (or sweep) folder that rank 0 chose,
    for every rank (each would resolve its own `${now:}`: hydra#2070); and for ranks 1, 2, ...: no copy of
    the config, a log of their own (`cnnvis.rankR.log`), and only warnings on the terminal."""
    multirun = "-m" in argv or "--multirun" in argv
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    given = _override_value(argv, key)
    folder = world.announce(given or _resolved(argv, key) if world.main else None)
    argv = [*argv, f"{key}={_hydra_string(key, folder)}"] if not given else argv
    if world.main:
        return argv
    return [*argv, "hydra.output_subdir=null", f"hydra.job.name=cnnvis.rank{world.rank}",
            "++hydra.job_logging.handlers.console.level=WARNING"]


def _resolved(argv: list[str], key: str) -> str:
    """The value of `key` in the Hydra config that `argv` composes, resolved (`${now:...}` included)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    args = get_args_parser().parse_args(argv)
    # a sweep's folder does not depend on its values: the first of each will do
    overrides = [_override_with(override, None) for override in OverridesParser.create().parse_overrides(
        [text for text in args.overrides if not text.startswith(("hydra/launcher", "hydra.launcher"))])]
    if args.config_dir:
        overrides = _with_search_dir(overrides, Path(args.config_dir).expanduser().resolve())
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="cnnvis"):
        composed = hydra_compose(config_name=args.config_name or "config", overrides=overrides,
                                 return_hydra_config=True)
    return str(OmegaConf.select(composed, key))


_OVERRIDE = re.compile(r"(?P<key>[+~]{0,2}[\w.@/-]+)=(?P<value>.*)", re.DOTALL)
FREE_FORM = ("model.kwargs",)  # dictionaries whose keys are the user's: Hydra's struct mode would refuse them
_BARE_TRUE = re.compile(r"(?<=[\[,])\s*[Tt]rue\s*(?=[,\]])")


def prepare_overrides(argv: list[str]) -> list[str]:
    """The overrides as Hydra should read them. A value that starts with `~` is a path in the home folder:
    the shell leaves `~` alone after `key=` and Hydra's grammar rejects it, so it is expanded here as a
    shell would expand it (each value of a sweep), and quoted where Hydra needs quotes. A bare `true` in
    `targets` is the target, not YAML's boolean. The keys of a free-form dictionary (`model.kwargs={depth:
    18}`, `model.kwargs.depth=18`) are set whether or not the option file has them."""
    prepared = []
    for arg in argv:
        match = None if arg.startswith("-") else _OVERRIDE.fullmatch(arg)
        if match is None:
            prepared.append(arg)
            continue
        key, value = match["key"], match["value"]
        if "~" in value and not value.startswith(("'", '"', "[", "{")):
            value = ",".join(_hydra_string(key, os.path.expanduser(part)) if part.startswith("~") else part
                             for part in value.split(","))
        if key.lstrip("+~") == "targets":
            value = _BARE_TRUE.sub("'true'", value)
        if any(key == name or key.startswith(f"{name}.") for name in FREE_FORM):
            key = f"++{key}"
        prepared.append(f"{key}={value}")
    return prepared


def _hydra_string(key: str, value: str) -> str:
    """`value` as it can stand after `key=` in a Hydra override: as it is where Hydra's grammar reads it as
    that string, else quoted."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        if OverridesParser.create().parse_override(f"{key}={value}").value() == value:
            return value
    except HydraException:
        pass
    quote = "'" if "'" not in value else '"'
    return f"{quote}{value}{quote}"


def _require_makeable(key: str, folder: Path) -> None:
    """A UserError when `folder` cannot be a folder: it, or a folder above it, is a file, or cannot be
    looked at."""
    for path in (folder, *folder.parents):
        try:
            is_file = path.exists() and not path.is_dir()
        except OSError as error:  # no permission to look
            raise UserError(f"{key}={folder} cannot be made: {error.strerror} ({path}); choose another {key}") \
                from error
        if is_file:
            raise UserError(f"{key}={folder} cannot be made: {path} is a file, not a folder; choose another {key}")


def _override_value(argv: list[str], key: str) -> str | None:
    """The value of `key` in the overrides (the last one given), as Hydra reads it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    for arg in reversed(argv):
        if arg.startswith(f"{key}="):
            try:
                value = OverridesParser.create().parse_override(arg).value()
            except HydraException:
                return None  # check_overrides has said what is wrong with it
            return str(value) if value is not None else None
    return None


def _hydra_app(existing: Path | None = None):
    """The Hydra app of `cnnvis run`; a run directory that `existing` names was there before the command,
    and stays whatever happens."""
    import hydra
    from omegaconf import DictConfig

    from cnnvis_cli.pipeline import Interrupted

    @hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")
    def cnnvis_run(cfg: DictConfig) -> None:
        from hydra.core.hydra_config import HydraConfig

        from cnnvis_cli import world as processes
        from cnnvis_cli.checks import load_run_config
        from cnnvis_cli.pipeline import run, run_as_rank

        output_dir = Path(HydraConfig.get().runtime.output_dir)
        owned = not processes.joined()  # a launcher's job (submitit's tasks) joins here, and leaves at its end
        world = processes.current(float(cfg.get("rank_timeout", 60)))
        spawned, failed = None, True
        try:
            run_config = load_run_config(cfg)
            if world.size > 1:  # a launcher's processes (under submitit, each resolved its own folder)
                output_dir = Path(world.announce(str(output_dir)))
            elif run_config.devices > 1:
                check_devices(run_config)
                world = spawned = processes.spawn(run_config.devices, run_config.rank_timeout, run_as_rank,
                                                  run_config, output_dir)
            if world.size > 1:
                label_logs(world.rank, output_dir)
            with stdout_to_stderr():  # whatever the model's code or its libraries print
                result = run(run_config, output_dir, world)
            failed = False
        except UserError as error:
            world.fail(str(error))
            if output_dir.resolve() != existing and world.main:
                discard_unused(output_dir, below=Path.cwd())  # a mistake leaves no run directory behind
            sys.exit(fail(error) if world.main else 2)
        except Interrupted as stop:
            if stop.reason is None:
                raise
            sys.exit(stopped(stop))
        except Exception as error:  # a crash: the other ranks stop too, naming this one
            world.fail(f"{type(error).__name__}: {first_line(str(error))}")
            raise
        finally:
            if spawned is not None:
                processes.leave(spawned, failed)
            elif owned and world.size > 1:
                if failed:
                    world.abandon()
                else:
                    world.close()
                processes.forget()
        if not world.main:
            return
        _report(result.summary, result.run_dir)
        if run_config.stdout == "jsonl":
            emit(json.dumps(record, ensure_ascii=False) for record in result.records)
        else:
            emit([str(result.run_dir)])

    return cnnvis_run


def check_devices(cfg) -> None:
    """devices=N asks for N GPUs where the run is on the GPU; a UserError when there are fewer."""
    import torch

    from cnnvis_cli.device import resolve_device

    if resolve_device(cfg.device).type == "cuda" and cfg.devices > torch.cuda.device_count():
        raise UserError(f"devices={cfg.devices} but this machine has {torch.cuda.device_count()} GPUs; "
                        f"use devices={torch.cuda.device_count()} or fewer")


def label_logs(rank: int, output_dir: Path) -> None:
    """Mark every log line of this process with its rank; ranks 1, 2, ... keep their log in a file of their
    own (`cnnvis.rankR.log`) and show only warnings on the terminal."""
    import logging

    root = logging.getLogger()
    for handler in list(root.handlers):
        if rank and isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).name == "cnnvis.log":
            root.removeHandler(handler)
            handler.close()
            handler = logging.FileHandler(output_dir / f"cnnvis.rank{rank}.log")
            root.addHandler(handler)
        elif rank and isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.WARNING)
        handler.setFormatter(logging.Formatter(f"[%(asctime)s][rank {rank}][%(levelname)s] %(message)s"))


def stopped(stop) -> int:
    """A run that another rank's end stopped: one line naming the rank, and how to finish the run."""
    print(f"cnnvis: error: {for_terminal(stop.reason)}; the run stopped; finish it with: "
          f"cnnvis run resume={stop.run_dir}", file=sys.stderr)
    return 1


def _report(summary: dict, run_dir: Path) -> None:
    """What the run found, in three lines on standard error and in the run's log (cnnvis.log)."""
    import logging

    accuracy = summary["accuracy"]
    selection = summary["selection"]
    reasons = ", ".join(f"{name} {count}" for name, count in selection["selected_by_reason"].items())
    lines = [
        f"{summary['samples']} samples"
        + (f", accuracy {accuracy:.1%}" if accuracy is not None else " (unlabelled)")
        + (f", {summary['unreadable']} unreadable (errors.csv)" if summary["unreadable"] else ""),
        f"selected {selection['selected']}" + (f" ({reasons})" if reasons else "")
        + f"; {summary['heatmaps']} heatmaps with {', '.join(summary['techniques'])}",
        f"{summary['seconds']['total']:.1f} s on {summary['device']}; results in {run_dir}"
        + ("; open report.html there" if (run_dir / "report.html").is_file() else ""),
    ]
    if not selection["selected"]:
        lines[1] = "no sample met the selection criteria: nothing to explain"
    for line in lines:
        logging.getLogger("cnnvis").info(line)


def check_overrides(argv: list[str]) -> None:
    """Compose the config that `argv` asks for (each choice of a sweep) and validate it; raise UserError."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        args = get_args_parser().parse_args(argv)
    except SystemExit:
        return  # Hydra reports its own usage errors
    if args.help or args.hydra_help or args.cfg or args.info or args.shell_completion or args.config_path \
            or args.experimental_rerun:
        return
    parser = OverridesParser.create()
    for text in args.overrides:
        try:
            parser.parse_override(text)
        except HydraException as error:
            raise UserError(
                f"cannot read the override {text!r} ({first_line(str(error)).split(':')[0]}); quote a value "
                "that holds special characters for Hydra, and the whole argument for the shell: "
                f"{_quoting_example(text)}") from error
    overrides = parser.parse_overrides(args.overrides)
    for override in overrides:
        if override.is_sweep_override() and not args.multirun:
            example = _quoting_example(override.input_line)
            raise UserError(f"{override.input_line!r} is a sweep (a comma separates values to try one by one); "
                            f"add -m to sweep, or quote a value that holds a comma: {example}")
    first = [_override_with(o, None) for o in overrides]
    variants = [first]  # the first value of every sweep, then each other value of each sweep in turn
    for position, override in enumerate(overrides):
        if override.is_sweep_override():
            for value in list(override.sweep_string_iterator())[1:]:
                variants.append([*first[:position], _override_with(override, value), *first[position + 1:]])
    for variant in variants:
        if args.config_dir:
            variant = _with_search_dir(variant, Path(args.config_dir).expanduser().resolve())
        _validate(compose(variant, args.config_name or "config"))


def _quoting_example(text: str) -> str:
    key, _, value = text.partition("=")
    return f"\"{key}='{value}'\"" if value and "'" not in value else "\"key='a value'\""


def _with_search_dir(overrides: list[str], folder: Path) -> list[str]:
    """Add `folder` (from -cd) to the `hydra.searchpath` override, or add that override."""
    entry = f"file://{folder}"
    for position, override in enumerate(overrides):
        key, _, value = override.partition("=")
        if key.lstrip("+") == "hydra.searchpath":
            listed = value.strip().removeprefix("[").removesuffix("]").strip()
            return [*overrides[:position], f"{key}=[{listed + ',' if listed else ''}{entry}]",
                    *overrides[position + 1:]]
    return [*overrides, f"hydra.searchpath=[{entry}]"]


def _override_with(override, value: str | None) -> str:
    """The override as a string, with its first sweep value (or `value`) in place of a sweep."""
    if override.is_delete():
        return override.input_line
    if value is None:
        value = next(iter(override.sweep_string_iterator())) if override.is_sweep_override() \
            else override.get_value_element_as_str()
    return f"{override.get_key_element()}={value}"


def compose(overrides: Sequence[str] = (), config_name: str = "config"):
    """The config `cnnvis run OVERRIDES` would get, without running; UserError on any mistake."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException

    register_schema()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="cnnvis"):
            return hydra_compose(config_name=config_name, overrides=list(overrides))
    except MissingConfigException as error:
        # a single choice names its file; an item of a list (`technique=[gradcam,foo]`) only the message does
        found = re.search(r"Could not load '([^']+)'", str(error))
        missing = str(error.missing_cfg_file or (found.group(1) if found else ""))
        group, _, name = missing.rpartition("/")
        if group in GROUPS:
            options = error.options or [path.stem for path in (config_dir() / group).glob("*.yaml")]
            raise unknown_name(group, name, options, f"cnnvis list {group}s") from error
        if group == "hydra/launcher":
            raise UserError(f"no launcher named {name!r}: Hydra's launchers come with pip install "
                            "'cnnvis[cluster]' (joblib, submitit_local, submitit_slurm, and cnnvis's slurm "
                            "preset)") from error
        raise UserError(first_line(str(error))) from error
    except ConfigCompositionException as error:
        raise _composition_error(error) from error
    except HydraException as error:
        raise UserError(first_line(str(error))) from error


def _composition_error(error: Exception) -> UserError:
    """One line for a bad key or value, found in an override or in a config file."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    from cnnvis_cli.config import unknown_key

    text, cause = str(error), error.__cause__
    found = re.search(r"full_key: (\S+)", f"{text}\n{cause}")
    full_key = getattr(cause, "full_key", None) or (found.group(1) if found else None)
    where = re.match(r"In '([^']+)'", text)
    prefix = f"in config file {where.group(1)}.yaml: " if where else ""
    if full_key and (isinstance(cause, ValidationError) or "ValidationError" in text):
        detail = first_line(getattr(cause, "msg", None) or text.split("\n", 1)[-1])
        return UserError(f"{prefix}invalid value for '{full_key}': {detail}")
    if full_key and (isinstance(cause, (ConfigKeyError, ConfigAttributeError)) or "Key '" in text):
        return UserError(f"{prefix}{unknown_key(str(full_key))}")
    return UserError(first_line(text))


def _validate(cfg) -> None:
    from cnnvis_cli.checks import check_paths, load_run_config

    check_paths(load_run_config(cfg))



# --- list -----------------------------------------------------------------------------------------


def _list(argv: list[str]) -> int:
    if not argv:
        raise UserError(f"usage: cnnvis list {{{'|'.join(LISTABLE)}}}")
    if argv[0] not in LISTABLE:
        raise unknown_name("list", argv[0], LISTABLE)
    what, overrides = argv[0], argv[1:]
    if what == "layers":
        return _list_layers(overrides)
    if what == "techniques":
        from cnnvis_cli.techniques import PRESETS, TECHNIQUES

        _print_table([(name, technique.summary) for name, technique in TECHNIQUES.items()] + list(PRESETS.items()))
        print("\ncost per image and target:")
        _print_table([(name, technique.cost) for name, technique in TECHNIQUES.items()])
        print("\nmodels each explains:")
        _print_table([(name, technique.families) for name, technique in TECHNIQUES.items()])
        return 0
    if what == "analyses":
        from cnnvis_cli.patterns import ANALYSES

        _print_table(list(ANALYSES.items()))
        print("\nanalysis=[groups,confusions,classes,slices,channels] adds them to a run (patterns/, summary.json, "
              "report)")
        return 0
    if what == "metrics":
        from cnnvis_cli.metrics import METRICS

        _print_table(list(METRICS.items()))
        print("\nmetrics=[deletion,insertion,...] scores every heatmap of a run (metrics.csv, summary.json, report)")
        return 0
    rows = _options(what[:-1])
    if what == "models":
        from cnnvis_cli.models import torchvision_model_names

        names = torchvision_model_names()
        _print_table(rows)
        print(f"\nany of torchvision's {len(names)} classifiers: model=torchvision model.name=NAME, "
              f"NAME one of {', '.join(names)}")
    elif what == "selections":
        from cnnvis_cli.selection import CRITERIA_HELP

        _print_table(rows)
        print("\ncriteria (selection.criteria=[...], combined with selection.mode=any|all):")
        _print_table(list(CRITERIA_HELP.items()))
    else:
        _print_table(rows)
    return 0


def _options(group: str) -> list[tuple[str, str]]:
    """The option files of a config group, with the first comment line of each as its description."""
    rows = []
    for path in sorted((config_dir() / group).glob("*.yaml")):
        first = path.read_text().splitlines()[0] if path.stat().st_size else ""
        rows.append((path.stem, first.lstrip("# ").strip() if first.startswith("#") else ""))
    return rows


def _print_table(rows: list[tuple[str, str]]) -> None:
    width = max((len(name) for name, _ in rows), default=0)
    for name, description in rows:
        print(f"  {name:<{width}}  {description}".rstrip())


def _list_layers(overrides: list[str]) -> int:
    from cnnvis_cli.checks import load_run_config
    from cnnvis_cli.models import load_model

    cfg = load_run_config(compose(overrides))
    if cfg.model.source in ("torchvision", "timm"):
        cfg.model.weights = None  # the architecture is enough: no download to list layers
    loaded = load_model(cfg.model)
    layers = loaded.layers
    print(f"layers of {loaded.name} with a spatial output at {loaded.preprocess.input_size} px, as C x H x W "
          f"(* = target layer; choose another with model.target_layer=NAME):")
    width = max(len(layer.name) for layer in layers)
    kind_width = max(len(layer.kind) for layer in layers)
    for layer in layers:
        mark = "*" if layer.name == loaded.target_layer else " "
        shape = " x ".join(map(str, layer.shape))
        notes = [layer.layout.describe(layer.output_shape)] if layer.layout.kind != "nchw" else []
        if layer.embedding:
            notes.append("patch embedding, before any attention")
        elif layer.reaches_output is False:
            notes.append("no gradient from the scores reaches its grid")
        if layer.calls > 1:
            notes.append(f"called {layer.calls} times per pass: CAMs explain its last call")
        print(f"{mark} {layer.name:<{width}}  {layer.kind:<{kind_width}}  {shape:<14}  {'; '.join(notes)}".rstrip())
    return 0


# --- demo -----------------------------------------------------------------------------------------


def _demo(argv: list[str]) -> int:
    if not argv or argv[0] != "train":
        raise UserError("usage: cnnvis demo train [--help]")
    from cnnvis_cli.demo.train import main as train_main

    return train_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
