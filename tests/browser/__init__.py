"""Browser tests: Playwright + Debian chromium against a running app and job worker."""
