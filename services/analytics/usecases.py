"""The analytics service's use cases as one object: what controllers and consumers call (wired in
`app.create_app`)."""

from __future__ import annotations

from dataclasses import dataclass

from services.analytics.projections import Projections
from services.analytics.reports import Reports


@dataclass(frozen=True)
class AnalyticsUseCases:
    projections: Projections
    reports: Reports
