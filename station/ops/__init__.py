"""Operations: metrics, logs, systemd, install, start-up checks, status and trace reports."""
