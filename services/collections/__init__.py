"""Collections service: Accrues the platform's commission on external payments and collects it from barbers."""
