"""``anomalib-agpt serve``: AnomalyGPT's web demo on Gradio (anomalib's web UI library), offline and local.

Upload or pick an image (and, optionally, normal reference images for few-shot), see the anomaly
heatmap, the predicted mask, the score and the model's answer, and ask follow-up questions. The page
only wires Gradio components to :class:`~anomalib_agpt.apps.serve.handlers.ServeSession`; all behaviour
lives there. Nothing is fetched from the network: analytics are off and the theme uses system fonts.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomalib_agpt.apps.serve.handlers import DEFAULT_MAX_IMAGE_PIXELS, Analysis, ServeSession

if TYPE_CHECKING:
    import gradio as gr

    from anomalib_agpt.apps.serve.models import ServedModel

logger = logging.getLogger(__name__)

INSTALL_HINT = "anomalib-agpt serve needs Gradio: pip install 'anomalib-agpt[serve]'"
HOST_HELP = (
    "address to listen on (default 127.0.0.1: this machine only). The page has NO authentication: anyone "
    "who can reach the address can run the model, upload files and read the example images, so only pass "
    "another host (e.g. 0.0.0.0, all interfaces) on a network you trust, or behind an authenticating proxy."
)
OFFLINE_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
CSS = """
#status p { margin: 0; }
#status.error, .status-error { color: #b42318; }
"""


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Command-line options of ``serve`` (no Gradio needed, so ``--help`` always works)."""
    from anomalib_agpt.apps.leaderboard import CHECKPOINT_ENV, IMAGEBIND_ENV, PANDAGPT_ENV

    parser = argparse.ArgumentParser(
        prog="anomalib-agpt serve",
        description="Web demo: image in; anomaly heatmap, mask, score and a conversation about the defect out. "
        "With no model options it serves the demo preset (random weights) and says so on the page.",
    )
    model = parser.add_argument_group("model (none given: the demo preset)")
    model.add_argument("--checkpoint", help="a trained Lightning checkpoint (e.g. from `anomalib-agpt demo`)")
    model.add_argument(
        "--imagebind-checkpoint",
        default=os.environ.get(IMAGEBIND_ENV) or None,
        help=f"imagebind_huge.pth (default ${IMAGEBIND_ENV})",
    )
    model.add_argument(
        "--anomalygpt-checkpoint",
        default=os.environ.get(CHECKPOINT_ENV) or None,
        help=f"AnomalyGPT delta, e.g. train_supervised/pytorch_model.pt (default ${CHECKPOINT_ENV})",
    )
    model.add_argument("--vision-heads", type=int, help="attention heads of the vision tower (16 for Huge)")
    model.add_argument("--text-heads", type=int, help="attention heads of the text tower (16 for Huge)")
    model.add_argument("--llm", help="LLM folder (Vicuna-7B v0) for answers; without it: scores only")
    model.add_argument(
        "--pandagpt-checkpoint",
        default=os.environ.get(PANDAGPT_ENV) or None,
        help=f"PandaGPT delta (llama_proj and LoRA; default ${PANDAGPT_ENV})",
    )
    model.add_argument("--class-name", help="object name for the prompts (the page can switch it)")
    model.add_argument("--max-new-tokens", type=int, help="longest answer, in tokens")
    model.add_argument("--examples", help="folder of images offered as examples on the page")
    model.add_argument(
        "--demo-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "anomalib_agpt_serve_demo",
        help="where the demo preset writes its synthetic images",
    )
    model.add_argument("--seed", type=int, default=0, help="seed of the demo preset")
    server = parser.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1", help=HOST_HELP)
    server.add_argument("--port", type=int, default=7860)
    server.add_argument(
        "--max-image-pixels",
        type=int,
        default=DEFAULT_MAX_IMAGE_PIXELS,
        help="largest image (width x height) accepted; larger ones get a message (default %(default)s)",
    )
    server.add_argument("--max-upload-mb", type=int, default=50, help="largest upload, in MB (default %(default)s)")
    return parser.parse_args(list(argv))


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
        history = gr.skip() if keep else analysis.history
        chat = gr.skip() if keep else chat_messages(analysis.history)
        return (*images, score, chat, history, status_markdown(analysis))

    def on_image(image: str | None) -> tuple[Any, str]:
        analysis = session.preview(image)
        return analysis.image, status_markdown(analysis)

    def on_analyse(image: str | None, references: list[str] | None, class_name: str, question: str) -> tuple:
        return outputs(session.analyse(image, references, class_name, question), follow_up=False)

    def on_follow_up(
        image: str | None,
        references: list[str] | None,
        class_name: str,
        question: str,
        history: list[tuple[str, str]],
    ) -> tuple:
        analysis = session.follow_up(image, references, class_name, question, history)
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
                image = gr.File(label="Image", file_types=["image"], type="filepath", height=160, elem_id="image-input")
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
                score = gr.Textbox(label="Anomaly score", interactive=False, elem_id="score")
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

        shown = [view, heatmap, mask, score, chatbot, history, status]
        image.change(on_image, inputs=image, outputs=[view, status])
        class_name.change(on_class_name, inputs=class_name, outputs=question)
        analyse.click(on_analyse, inputs=[image, references, class_name, question], outputs=shown)
        follow_inputs = [image, references, class_name, follow_up, history]
        ask.click(on_follow_up, inputs=follow_inputs, outputs=[*shown, follow_up])
        follow_up.submit(on_follow_up, inputs=follow_inputs, outputs=[*shown, follow_up])
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
    from anomalib_agpt.model.checkpoints import CheckpointError

    options = ModelOptions(
        **{name: getattr(args, name) for name in ModelOptions.__dataclass_fields__ if hasattr(args, name)}
    )
    print("anomalib-agpt serve: loading the model ...", flush=True)
    try:
        served = load_served_model(options)
        session = ServeSession(served.model, max_image_pixels=args.max_image_pixels)
    except (ValueError, FileNotFoundError, CheckpointError) as error:
        raise SystemExit(f"anomalib-agpt serve: {error}") from error
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
        show_error=False,
        max_file_size=f"{args.max_upload_mb}mb",
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
