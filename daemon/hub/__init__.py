"""The appliance's side of the hub: finding and verifying the provisioning bundle
(``provisioner``, ``bundle_finder``), enrollment (``enroll``, with the ``hardware`` facts it
reports), the MQTT session (``link``), certificate renewal over it (``renewal``), the durable
event outbox (``outbox``) and the hub's remote commands (``remote``)."""
