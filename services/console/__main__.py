"""`python -m services.console`: serve the console on its configured host and port."""

from services.console.settings import load
from shared.service import serve

if __name__ == "__main__":
    serve("services.console.app:create_app", load())
