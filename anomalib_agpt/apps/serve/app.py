"""``anomalib-agpt serve``: AnomalyGPT's web demo on Gradio (anomalib's web UI library), offline and local.

Upload or pick an image (and, optionally, normal reference images for few-shot), see the anomaly
heatmap, the predicted mask, the score, labelled verdicts and the model's answer, and ask follow-up
questions. The page only wires Gradio components to :class:`~anomalib_agpt.apps.serve.handlers.ServeSession`;
all behaviour lives there. Nothing is fetched from the network: analytics are off, the theme uses system
fonts and Gradio prints no share-link hint. Options are parsed by the commands' shared parser
(:mod:`anomalib_agpt.apps.options`, jsonargparse as in anomalib's CLI): ``--config serve.yaml`` (the same
names with underscores), ``--print_config`` and one short ``error:`` line for a mistake.
"""

from __future__ import annotations

import argparse
import html
import ipaddress
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomalib_agpt.apps.options import CommandParser, add_llm_options, add_option, add_weight_options, fail
from anomalib_agpt.apps.serve.handlers import Analysis, ServeSession
from anomalib_agpt.apps.serve.uploads import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_UPLOAD_MB, MB, limit_pil_decoding
from anomalib_agpt.errors import OptionError

if TYPE_CHECKING:
    import gradio as gr

    from anomalib_agpt.apps.serve.models import ServedModel

logger = logging.getLogger(__name__)

PROG = "anomalib-agpt serve"
INSTALL_HINT = "anomalib-agpt serve needs Gradio: pip install 'anomalib-agpt[serve]'"
HOST_HELP = (
    "address to listen on (default 127.0.0.1: this machine only). The page has NO authentication: anyone "
    "who can reach the address can run the model, upload files and read the example images, so only pass "
    "another host (e.g. 0.0.0.0, all interfaces) on a network you trust, or behind an authenticating proxy."
)
DESCRIPTION = """\
Web demo: image in; anomaly heatmap, mask, score, labelled verdicts and a conversation about the defect \
out. With no model options it serves the demo preset (random weights) and says so on the page.

Every option can also be given in a YAML file (--config) under the same name; flags win over the file. \
--print_config prints the options as such a file."""
EPILOG = """\
examples:
  anomalib-agpt serve
  anomalib-agpt serve --checkpoint path/to/model.ckpt
  anomalib-agpt serve --checkpoint model.ckpt --print_config > serve.yaml
  anomalib-agpt serve --config serve.yaml --max-upload-mb 5"""
OFFLINE_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
CSS = """
#status p { margin: 0; }
#status.error, .status-error { color: #b42318; }
#verdict .verdicts { display: flex; flex-wrap: wrap; gap: 6px; align-items: center; }
#verdict .badge { color: #fff; border-radius: 4px; padding: 2px 8px; font-weight: 600; }
#verdict .badge.anomalous { background: #c81e1e; }
#verdict .badge.normal { background: #1e9632; }
#verdict .no-verdict { color: #666; }
"""


def build_parser() -> CommandParser:
    """The ``serve`` options, each with its underscore and dashed spelling (environment defaults read now)."""
    parser = CommandParser(PROG, DESCRIPTION, EPILOG)
    model = parser.add_argument_group("model (none given: the demo preset)")
    checkpoint_help = "a trained Lightning checkpoint (e.g. from anomalib-agpt demo)"
    add_option(model, "checkpoint", str | None, None, "FILE", checkpoint_help)
    add_weight_options(model, heads_default=None)
    add_llm_options(model, "LLM folder (Vicuna-7B v0) for answers; without it: scores only")
    add_option(model, "class_name", str | None, None, "NAME", "object name for the prompts (the page can switch it)")
    add_option(model, "max_new_tokens", int | None, None, "N", "longest answer, in tokens")
    add_option(model, "examples", str | None, None, "DIR", "folder of images offered as examples on the page")
    demo_dir = str(Path(tempfile.gettempdir()) / "anomalib_agpt_serve_demo")
    demo_dir_help = f"where the demo preset writes its synthetic images (default: {demo_dir})"
    add_option(model, "demo_dir", str, demo_dir, "DIR", demo_dir_help)
    add_option(model, "seed", int, 0, "N", "seed of the demo preset (default: 0)")
    server = parser.add_argument_group("server")
    add_option(server, "host", str, "127.0.0.1", "HOST", HOST_HELP)
    add_option(server, "port", int, 7860, "PORT", "port to listen on (default: 7860)")
    pixels_help = (
        "largest image (width x height) decoded; larger ones, decompression bombs included, get a message "
        f"(default: {DEFAULT_MAX_IMAGE_PIXELS})"
    )
    add_option(server, "max_image_pixels", int, DEFAULT_MAX_IMAGE_PIXELS, "N", pixels_help)
    upload_help = (
        "largest uploaded file, in MB; larger ones get a message and are not opened "
        f"(default: {DEFAULT_MAX_UPLOAD_MB:g})"
    )
    add_option(server, "max_upload_mb", float, DEFAULT_MAX_UPLOAD_MB, "MB", upload_help)
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Command-line options of ``serve`` (no Gradio needed, so ``--help`` always works).

    Mistakes print the usage and one ``error: ...`` line and exit with status 2. The result is a plain
    namespace with one attribute per option (underscored), ``demo_dir`` a :class:`~pathlib.Path`.
    """
    parser = build_parser()
    config, print_config = parser.parse(argv)
    if print_config is not None:
        parser.print_options(config, print_config)
    values = {key: value for key, value in config.as_dict().items() if key != "config"}
    if not 0 < values["port"] < 65536:
        fail(parser, OptionError(f"{parser.spelled('port')}: expected 1-65535, got {values['port']}"))
    for name in ("max_image_pixels", "max_upload_mb", "vision_heads", "text_heads", "max_new_tokens"):
        if values[name] is not None and not values[name] > 0:
            fail(parser, OptionError(f"{parser.spelled(name)}: expected a positive number, got {values[name]}"))
    values["demo_dir"] = Path(values["demo_dir"])
    return argparse.Namespace(**values)


def import_gradio() -> Any:  # noqa: ANN401
    """Gradio with analytics off, or a clear exit when the ``serve`` extra is not installed."""
    for name, value in OFFLINE_ENV.items():
        os.environ.setdefault(name, value)
    try:
        import gradio
    except ImportError as error:
        raise SystemExit(INSTALL_HINT) from error
    return gradio


def status_markdown(analysis: Analysis) -> str:
    """The status line: problems in bold with a warning sign, notes as they are."""
    if not analysis.message:
        return ""
    return f"⚠️ **{analysis.message}**" if not analysis.ok else analysis.message


def verdict_html(analysis: Analysis) -> str:
    """The labelled verdict badges (``answer: ...``, ``score > threshold: ...``), or that there is no score verdict."""
    if analysis.score is None:
        return ""
    badges = [
        f'<span class="badge {"anomalous" if v.anomalous else "normal"}">{html.escape(v.text)}</span>'
        for v in analysis.verdicts
    ]
    if analysis.threshold is None:
        badges.append('<span class="no-verdict">no score verdict: the model has no fitted threshold</span>')
    return f'<div class="verdicts"><strong>Verdict</strong> {" ".join(badges)}</div>'


def upload_path(value: Any) -> str | None:  # noqa: ANN401 - what Gradio sends for a file
    """The server-side path of an upload as Gradio passes it unprocessed (a FileData dict), or a plain path."""
    if value is None:
        return None
    if isinstance(value, dict):
        return value.get("path")
    return str(getattr(value, "path", value))


def upload_paths(value: Any) -> list[str]:  # noqa: ANN401 - what Gradio sends for a multi-file input
    """:func:`upload_path` of each file of a multi-file upload."""
    if value is None:
        return []
    files = value if isinstance(value, list) else [value]
    return [path for path in (upload_path(file) for file in files) if path]


def chat_messages(history: Sequence[Sequence[str]]) -> list[dict[str, str]]:
    """``(question, answer)`` turns as the Chatbot's messages."""
    messages = []
    for question, answer in history:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return messages


def build_app(session: ServeSession, served: ServedModel) -> gr.Blocks:
    """The page: inputs on the left; image, heatmap, mask, score and the conversation on the right."""
    gr = import_gradio()
    default_class = session.default_class_name

    def outputs(analysis: Analysis, follow_up: bool) -> tuple[Any, ...]:
        """Component values; a failed follow-up leaves what is shown (images and conversation) as it was."""
        keep = follow_up and not analysis.ok
        images = [gr.skip() if keep else value for value in (analysis.image, analysis.heatmap, analysis.mask)]
        score = gr.skip() if keep else analysis.score_text
        verdict = gr.skip() if keep else verdict_html(analysis)
        history = gr.skip() if keep else analysis.history
        chat = gr.skip() if keep else chat_messages(analysis.history)
        return (*images, score, verdict, chat, history, status_markdown(analysis))

    # The file inputs reach these unprocessed (preprocess=False): Gradio's Image would open the upload
    # with PIL (and re-encode non-RGB images) before the handlers could check its size and header.
    def on_image(image: Any) -> tuple[Any, str]:  # noqa: ANN401
        analysis = session.preview(upload_path(image))
        return analysis.image, status_markdown(analysis)

    def on_analyse(image: Any, references: Any, class_name: str, question: str) -> tuple:  # noqa: ANN401
        analysis = session.analyse(upload_path(image), upload_paths(references), class_name, question)
        return outputs(analysis, follow_up=False)

    def on_follow_up(
        image: Any,  # noqa: ANN401
        references: Any,  # noqa: ANN401
        class_name: str,
        question: str,
        history: list[tuple[str, str]],
    ) -> tuple:
        paths = upload_path(image), upload_paths(references)
        analysis = session.follow_up(*paths, class_name, question, history)
        return (*outputs(analysis, follow_up=True), "" if analysis.ok else gr.skip())

    def on_class_name(class_name: str) -> Any:  # noqa: ANN401
        try:
            return gr.update(placeholder=session.question_for(class_name))
        except ValueError:
            return gr.skip()

    with gr.Blocks(title="AnomalyGPT web demo (anomalib-agpt)", analytics_enabled=False) as app:
        gr.Markdown("# AnomalyGPT: anomaly heatmap and a conversation about the defect")
        gr.Markdown(served.description, elem_id="banner")
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                image = gr.Image(
                    label="Image",
                    type="filepath",
                    image_mode=None,
                    sources=["upload", "clipboard"],
                    height=240,
                    elem_id="image-input",
                )
                references = gr.File(
                    label="Normal reference images (optional: few-shot)",
                    file_count="multiple",
                    file_types=["image"],
                    type="filepath",
                    height=160,
                    elem_id="references-input",
                )
                class_name = gr.Textbox(label="Class name", value=default_class, elem_id="class-name")
                question = gr.Textbox(
                    label="Question",
                    placeholder=session.question_for(default_class),
                    info="Empty: the question shown in grey.",
                    lines=3,
                    elem_id="question",
                )
                analyse = gr.Button("Analyse", variant="primary", elem_id="analyse")
                if served.examples:
                    gr.Examples(
                        served.examples,
                        inputs=[image, class_name],
                        label="Examples: pick one",
                        example_labels=served.example_labels,
                        elem_id="examples",
                    )
            with gr.Column(scale=2, min_width=480):
                status = gr.Markdown(elem_id="status")
                with gr.Row():
                    view, heatmap, mask = (
                        gr.Image(
                            label=label, interactive=False, height=260, buttons=["download", "fullscreen"], elem_id=key
                        )
                        for label, key in (
                            ("Image (the model's view)", "view"),
                            ("Anomaly heatmap", "heatmap"),
                            ("Predicted mask", "mask"),
                        )
                    )
                with gr.Row(equal_height=True):
                    score = gr.Textbox(label="Anomaly score", interactive=False, scale=1, elem_id="score")
                    verdict = gr.HTML(elem_id="verdict", padding=True)
                chatbot = gr.Chatbot(
                    label="Conversation (the bin icon starts a new one)",
                    height=260,
                    buttons=["copy_all"],
                    feedback_options=None,
                    elem_id="chat",
                )
                with gr.Row():
                    follow_up = gr.Textbox(
                        label="Follow-up question",
                        placeholder="e.g. Where is the defect?",
                        scale=4,
                        elem_id="follow-up",
                    )
                    ask = gr.Button("Ask", scale=1, elem_id="ask")
        history = gr.State([])

        shown = [view, heatmap, mask, score, verdict, chatbot, history, status]
        image.change(on_image, inputs=image, outputs=[view, status], preprocess=False)
        class_name.change(on_class_name, inputs=class_name, outputs=question)
        inputs = [image, references, class_name, question]
        analyse.click(on_analyse, inputs=inputs, outputs=shown, preprocess=False)
        follow_inputs = [image, references, class_name, follow_up, history]
        ask.click(on_follow_up, inputs=follow_inputs, outputs=[*shown, follow_up], preprocess=False)
        follow_up.submit(on_follow_up, inputs=follow_inputs, outputs=[*shown, follow_up], preprocess=False)
        chatbot.clear(lambda: ([], ""), outputs=[history, status])
    return app


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: Sequence[str] = ()) -> None:
    """Parse, load the model (before the page opens), build the page and serve it until interrupted."""
    args = parse_args(argv)
    gr = import_gradio()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from anomalib_agpt.apps.serve.models import ModelOptions, load_served_model

    limit_pil_decoding(args.max_image_pixels)
    options = ModelOptions(
        **{name: getattr(args, name) for name in ModelOptions.__dataclass_fields__ if hasattr(args, name)}
    )
    print(f"{PROG}: loading the model ...", flush=True)
    served = load_served_model(options)
    session = ServeSession(served.model, max_image_pixels=args.max_image_pixels, max_upload_mb=args.max_upload_mb)
    app = build_app(session, served)
    if not is_loopback(args.host):
        print(
            f"WARNING: serving on {args.host}, not only this machine: the page has no authentication; anyone who "
            "can reach it can run the model and upload files.",
            file=sys.stderr,
            flush=True,
        )
    theme = gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"],
        font_mono=["ui-monospace", "monospace"],
    )
    app.queue(default_concurrency_limit=1).launch(
        server_name=args.host,
        server_port=args.port,
        share=False,
        inbrowser=False,
        quiet=True,  # no "set share=True" hint; the line below says where the page is
        prevent_thread_lock=True,
        show_error=False,
        max_file_size=int(args.max_upload_mb * MB),
        allowed_paths=[str(served.example_folder)] if served.example_folder else None,
        footer_links=["gradio", "settings"],
        run_history=False,
        enable_monitoring=False,
        mcp_server=False,
        ssr_mode=False,
        pwa=False,
        theme=theme,
        css=CSS,
    )
    print(f"{PROG}: running on {app.local_url} (Ctrl+C stops it)", flush=True)
    app.block_thread()
