"""The console: server-rendered pages for operators and barbers (Litestar, Jinja2, htmx, Chart.js).

It owns no money tables. Every page reads and acts through the four services' APIs with the
signed-in user's own token, so the services' role checks stay the only authority; the console
only decides which pages to offer. Served under `/console` (the gateway routes it there).
"""
