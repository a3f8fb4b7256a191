# Sourced by the scripts that install Debian packages: sets `sudo_cmd`, empty as root (CI),
# `sudo` elsewhere when there is one; fails when neither can install.
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        sudo_cmd=(sudo)
    else
        echo "error: not root and no sudo: cannot install Debian packages" >&2
        exit 1
    fi
fi
