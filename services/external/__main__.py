"""`python -m services.external`: serve the external service on its configured host and port."""

from services.external.settings import load
from shared.service import serve

if __name__ == "__main__":
    serve("services.external.app:create_app", load())
