"""The app's own themes; Textual's built-in themes stay available beside them."""

from textual.theme import Theme

DARK = Theme(
    name="harmmed-dark",
    primary="#E0A030",
    secondary="#4FA3C7",
    accent="#D0506A",
    background="#14161A",
    surface="#1C1F24",
    panel="#262A31",
    error="#E05555",
    success="#5BB56A",
    warning="#E0A030",
    dark=True,
)
LIGHT = Theme(
    name="harmmed-light",
    primary="#9A5B00",
    secondary="#1F6E91",
    accent="#A3233F",
    background="#FAFAF7",
    surface="#F0EFEA",
    panel="#E4E2DA",
    error="#B00020",
    success="#2E7D32",
    warning="#9A5B00",
    dark=False,
)
CONTRAST = Theme(
    name="harmmed-contrast",
    primary="#FFFF00",
    secondary="#00FFFF",
    accent="#FF00FF",
    background="#000000",
    surface="#000000",
    panel="#202020",
    error="#FF4040",
    success="#00FF00",
    warning="#FFFF00",
    dark=True,
)
THEMES = (DARK, LIGHT, CONTRAST)
