"""Viewer elements that nerfstudio 1.1.5 lacks: markdown (with data-URL images), an upload button, a progress bar.

They follow `nerfstudio.viewer.viewer_elements`: plain objects discovered as attributes of the pipeline (or of a
child `nn.Module`), installed into the viser server by the viewer, usable before installation (without a viewer,
e.g. in tests or under `ns-train --vis tensorboard`, they simply keep their state). `set_enabled` and `set_shown`
do the same for any element, installed or not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

import viser
from nerfstudio.viewer.viewer_elements import ViewerElement
from viser import GuiMarkdownHandle, ViserServer

if TYPE_CHECKING:  # viser 0.2.7 does not export these from its top level
    from viser._gui_handles import GuiProgressBarHandle, GuiUploadButtonHandle, UploadedFile

__all__ = ["ViewerMarkdown", "ViewerUploadButton", "ViewerProgressBar", "set_enabled", "set_shown"]


def set_enabled(element: ViewerElement, enabled: bool) -> None:
    """Enable or grey out an element, whether or not a viewer has installed it yet."""
    element.disabled = not enabled
    _write_through(element, "disabled", not enabled)


def set_shown(element: ViewerElement, shown: bool) -> None:
    """Show or hide an element, whether or not a viewer has installed it yet."""
    element.visible = shown
    _write_through(element, "visible", shown)


def _write_through(element: ViewerElement, attribute: str, value: Any) -> None:
    """Show a state change at once when the element is installed (else the viewer installs it with the state)."""
    if element.gui_handle is not None:
        setattr(element.gui_handle, attribute, value)


class ViewerMarkdown(ViewerElement[str]):
    """Markdown in the control panel; images can be inlined as data URLs (viser 0.2.7 has no image element).

    Example:
        >>> note = ViewerMarkdown("**Score** 0.12")
        >>> note.content = "**Score** 0.15"  # shown at once if installed, else when the viewer installs it
    """

    gui_handle: Optional[GuiMarkdownHandle]  # type: ignore[assignment]

    def __init__(self, content: str = "", visible: bool = True) -> None:
        super().__init__(name="markdown", visible=visible)
        self._content = content

    @property
    def content(self) -> str:
        return self._content

    @content.setter
    def content(self, content: str) -> None:
        self._content = content
        _write_through(self, "content", content)

    def _create_gui_handle(self, viser_server: ViserServer) -> None:
        self.gui_handle = viser_server.gui.add_markdown(self._content, visible=self.visible)

    def install(self, viser_server: ViserServer) -> None:
        self._create_gui_handle(viser_server)


class ViewerUploadButton(ViewerElement["UploadedFile"]):
    """A button that uploads a file from the browser's disk; ``cb_hook(element)`` runs once it has arrived.

    Example:
        >>> button = ViewerUploadButton("Load image", cb_hook=lambda b: print(b.value.name), mime_type="image/*")
    """

    gui_handle: Optional[GuiUploadButtonHandle]  # type: ignore[assignment]

    def __init__(
        self,
        name: str,
        cb_hook: Callable[[ViewerUploadButton], Any],
        mime_type: str = "*/*",
        hint: Optional[str] = None,
        disabled: bool = False,
        visible: bool = True,
    ) -> None:
        super().__init__(name, disabled=disabled, visible=visible, cb_hook=cb_hook)
        self.mime_type = mime_type
        self.hint = hint

    @property
    def value(self) -> Optional[UploadedFile]:
        """The last uploaded file (name and bytes), None before any upload."""
        if self.gui_handle is None or not self.gui_handle.value.name:
            return None
        return self.gui_handle.value

    def _create_gui_handle(self, viser_server: ViserServer) -> None:
        self.gui_handle = viser_server.gui.add_upload_button(
            self.name,
            disabled=self.disabled,
            visible=self.visible,
            hint=self.hint,
            icon=viser.Icon.UPLOAD,
            mime_type=self.mime_type,
        )

    def install(self, viser_server: ViserServer) -> None:
        self._create_gui_handle(viser_server)
        assert self.gui_handle is not None
        self.gui_handle.on_upload(lambda _: self.cb_hook(self))


class ViewerProgressBar(ViewerElement[float]):
    """A progress bar, 0 to 100; ``animated`` stripes it while a step of unknown length runs."""

    gui_handle: Optional[GuiProgressBarHandle]  # type: ignore[assignment]

    def __init__(self, value: float = 0.0, visible: bool = True) -> None:
        super().__init__(name="progress", visible=visible)
        self._value = value
        self._animated = False

    @property
    def value(self) -> float:
        return self._value

    @value.setter
    def value(self, value: float) -> None:
        self._value = min(max(float(value), 0.0), 100.0)
        _write_through(self, "value", self._value)

    @property
    def animated(self) -> bool:
        return self._animated

    @animated.setter
    def animated(self, animated: bool) -> None:
        self._animated = animated
        _write_through(self, "animated", animated)

    def _create_gui_handle(self, viser_server: ViserServer) -> None:
        self.gui_handle = viser_server.gui.add_progress_bar(self._value, visible=self.visible, animated=self._animated)

    def install(self, viser_server: ViserServer) -> None:
        self._create_gui_handle(viser_server)
