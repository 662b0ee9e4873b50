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
cleanup() {
    # A failed second stage leaves its /proc and /sys mounted in the rootfs.
    grep -o " $rootfs/[^ ]*" /proc/mounts | sort -r | xargs -r umount -l || true
    rm -rf --one-file-system "$rootfs"
}
trap cleanup EXIT

echo "building $image ($arch, recipe $recipe) from $suite at $mirror"
if [[ "$arch" == "$(dpkg --print-architecture)" ]]; then
    debootstrap --variant=minbase --arch="$arch" --include="$packages" "$suite" "$rootfs" "$mirror"
else
    # Foreign arch: the binfmt handler (registered with the F flag) runs the target's binaries
    # through qemu-user-static for debootstrap's second stage.
    if [[ "$arch" == arm64 && ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]]; then
        echo "build-pi-image: $arch needs the qemu-aarch64 binfmt handler (F flag); install" \
            "qemu-user-static and binfmt-support, then run update-binfmts --enable qemu-aarch64" >&2
        exit 1
    fi
    debootstrap --variant=minbase --arch="$arch" --foreign --include="$packages" "$suite" "$rootfs" "$mirror"
    # The second stage looks each package up in the full Packages index (about 50 MB) with perl,
    # which is slow under emulation. Keep only the stanzas of the packages it installs; the
    # lookups then take seconds instead of half an hour. The index is deleted below anyway.
    for index in "$rootfs"/var/lib/apt/lists/*_Packages; do
        DEBS="$(cut -d' ' -f1 "$rootfs/debootstrap/debpaths")" perl -00 -ne '
            BEGIN { %wanted = map { $_ => 1 } split /\n/, $ENV{DEBS} }
            print if /^Package: (\S+)$/m && $wanted{$1}' "$index" > "$index.wanted"
        mv "$index.wanted" "$index"
    done
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

# Every daemon-reload (and `systemctl enable`) runs all of systemd's generators. These look for
# disks, crypto/verity volumes, hibernation images, consoles and fstab entries that a container
# never has; with a few hundred hosts reloading at once they took most of the machine's CPU.
# Disabling them (a /dev/null link in /etc/systemd/system-generators) changes nothing else.
mkdir -p /etc/systemd/system-generators
for generator in systemd-bless-boot-generator systemd-cryptsetup-generator \
    systemd-debug-generator systemd-fstab-generator systemd-getty-generator \
    systemd-gpt-auto-generator systemd-hibernate-resume-generator \
    systemd-integritysetup-generator systemd-system-update-generator \
    systemd-veritysetup-generator; do
    ln -sf /dev/null "/etc/systemd/system-generators/$generator"
done

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

if [[ "$arch" != "$(dpkg --print-architecture)" ]]; then
    # Under QEMU user-mode emulation systemd-sysusers, systemd-tmpfiles-setup and
    # systemd-tmpfiles-setup-dev failed at boot (seen in a trial boot of an arm64 host; amd64
    # hosts run them fine, so only emulated builds mask them). Their work is not needed at boot
    # here: the packages' postinst already ran systemd-sysusers when the image was built, /tmp
    # and /var/tmp ship in the image, services create their /run directories with
    # RuntimeDirectory=, and Docker provides /dev. Masking keeps `is-system-running` `running`.
    chroot "$rootfs" systemctl mask \
        systemd-sysusers.service systemd-tmpfiles-setup.service \
        systemd-tmpfiles-setup-dev.service >/dev/null
fi

# `docker import --platform` is honoured only by a daemon with experimental features; Docker
# 20.10 otherwise records the controller's architecture, and `--platform linux/arm64` then fails
# to find the image. So write a one-layer image archive with the architecture in its config and
# `docker load` it: offline, and right on every daemon.
archive="$(mktemp -d /var/tmp/edge-fleet-image.XXXXXX)"
trap 'cleanup; rm -rf "$archive"' EXIT
tar --numeric-owner -C "$rootfs" -cf "$archive/layer.tar" .
diff_id="$(sha256sum "$archive/layer.tar" | cut -d' ' -f1)"
cat > "$archive/config.json" <<CONFIG
{"architecture": "$arch", "os": "linux", "created": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
 "config": {"Cmd": ["/sbin/init"],
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "container=docker"],
            "Labels": {"org.edge-fleet.recipe": "$recipe", "org.edge-fleet.arch": "$arch",
                       "org.opencontainers.image.base.name": "debian:$suite"}},
 "rootfs": {"type": "layers", "diff_ids": ["sha256:$diff_id"]},
 "history": [{"created_by": "build-pi-image.sh $arch $recipe"}]}
CONFIG
config_id="$(sha256sum "$archive/config.json" | cut -d' ' -f1)"
mv "$archive/config.json" "$archive/$config_id.json"
printf '[{"Config": "%s.json", "RepoTags": ["%s"], "Layers": ["layer.tar"]}]\n' \
    "$config_id" "$image" > "$archive/manifest.json"
tar -C "$archive" -c manifest.json "$config_id.json" layer.tar | docker load
echo "built $image"
