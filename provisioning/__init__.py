"""The ``spoke-hub``: CA, enrollment, device registry, placement, model repository, fleet view."""
