"""The application: the `recoup` command line and its reports."""
