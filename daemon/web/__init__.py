"""Pages for people at the site: the technician's status page and the inspector's report."""
