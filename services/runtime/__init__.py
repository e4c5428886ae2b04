"""What every genmesh service does alike: settings, server bootstrap, auth, errors, telemetry."""
