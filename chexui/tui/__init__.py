"""The full-screen app (Textual). Domain state lives in state.py; screens only display it."""
