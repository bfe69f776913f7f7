"""Analytics service: Read models of every payment: the unified dashboard and Six Figure Barber insights."""
