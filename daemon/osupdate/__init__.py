"""Over-the-air OS updates on the appliance: fetch an OS version through the models' TUF client,
stage it into the inactive A/B slot with systemd-sysupdate, reboot only when policy allows."""
