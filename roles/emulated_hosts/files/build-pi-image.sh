#!/bin/bash
# Build the emulated Raspberry Pi image offline: debootstrap Debian bookworm (the base of
# Raspberry Pi OS), tune it to run systemd as PID 1 in a container, then `docker import` it.
# Usage: build-pi-image.sh IMAGE:TAG ARCH RECIPE_VERSION [MIRROR]
set -euo pipefail

image="$1"
arch="$2"          # amd64 or arm64
recipe="$3"
mirror="${4:-http://deb.debian.org/debian}"
suite=bookworm
packages=systemd,systemd-sysv,dbus,python3,sudo,iproute2,openssh-server,ca-certificates,procps

rootfs="$(mktemp -d /var/tmp/edge-fleet-rootfs.XXXXXX)"
trap 'rm -rf --one-file-system "$rootfs"' EXIT

echo "building $image ($arch, recipe $recipe) from $suite at $mirror"
if [[ "$arch" == "$(dpkg --print-architecture)" ]]; then
    debootstrap --variant=minbase --arch="$arch" --include="$packages" "$suite" "$rootfs" "$mirror"
else
    # Foreign arch: the binfmt handler (registered with the F flag) runs the target's binaries
    # through qemu-user-static for debootstrap's second stage.
    debootstrap --variant=minbase --arch="$arch" --foreign --include="$packages" "$suite" "$rootfs" "$mirror"
    chroot "$rootfs" /debootstrap/debootstrap --second-stage
fi

chroot "$rootfs" /bin/bash -euo pipefail <<'CHROOT'
# The `pi` user, as on Raspberry Pi OS: passwordless sudo, key-only SSH (no password is set).
useradd --create-home --shell /bin/bash --groups sudo pi
echo 'pi ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/010_pi-nopasswd
chmod 0440 /etc/sudoers.d/010_pi-nopasswd

# Units that need real hardware, a console or a writable /sys never succeed in a container;
# masking them lets `systemctl is-system-running` report `running` rather than `degraded`.
systemctl mask \
    getty@tty1.service serial-getty@.service console-getty.service getty.target \
    systemd-udevd.service systemd-udev-trigger.service systemd-udevd-control.socket \
    systemd-udevd-kernel.socket systemd-remount-fs.service systemd-firstboot.service \
    sys-kernel-config.mount sys-kernel-debug.mount sys-kernel-tracing.mount \
    dev-hugepages.mount systemd-modules-load.service apt-daily.timer apt-daily-upgrade.timer \
    e2scrub_reap.service >/dev/null

# sshd is started only for fleets reached over SSH. Host keys are created per container at
# first boot so that no two hosts share them.
systemctl disable ssh.service >/dev/null 2>&1 || true
rm -f /etc/ssh/ssh_host_*
mkdir -p /etc/systemd/system/ssh.service.d
printf '[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n' \
    > /etc/systemd/system/ssh.service.d/10-host-keys.conf
sed -i 's/^#\?PasswordAuthentication.*/PasswordAuthentication no/' /etc/ssh/sshd_config

# Keep the journal small: hundreds of hosts share one machine.
mkdir -p /etc/systemd/journald.conf.d
printf '[Journal]\nStorage=volatile\nRuntimeMaxUse=16M\n' > /etc/systemd/journald.conf.d/10-edge-fleet.conf

apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/*.log
# Every container gets its own machine id at boot.
: > /etc/machine-id
CHROOT

tar --numeric-owner -C "$rootfs" -c . | docker import \
    --platform "linux/$arch" \
    --change 'CMD ["/sbin/init"]' \
    --change 'ENV container=docker' \
    --change "LABEL org.edge-fleet.recipe=$recipe" \
    --change "LABEL org.edge-fleet.arch=$arch" \
    --change "LABEL org.opencontainers.image.base.name=debian:$suite" \
    - "$image"
echo "built $image"
