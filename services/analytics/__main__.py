"""`python -m services.analytics`: serve the analytics service on its configured host and port."""

from services.analytics.settings import load
from shared.service import serve

if __name__ == "__main__":
    serve("services.analytics.app:create_app", load())
