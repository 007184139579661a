"""The remote action server (`ph serve`): the app and its worker processes."""
