#!/usr/bin/env bash
# An emulated aarch64 "Raspberry Pi" for edgecomp's ssh device: Debian 12 arm64 run under
# qemu-user (binfmt_misc), with its own sshd on a loopback port and two runtimes in venvs.
# Root is needed (binfmt_misc, chroot, mounts). Emulated latency is ~200x native: this
# device proves that the ssh path and the on-device output check work on ARM, not speed.
#
#   sudo tools/aarch64_device.sh build /srv/pi          # debootstrap + venvs (~10 min on 2 cores)
#   sudo tools/aarch64_device.sh start /srv/pi 2222     # prints the --device and --ssh_option flags
#   sudo tools/aarch64_device.sh stop /srv/pi
#
# QEMU_CPU (default cortex-a72, a Raspberry Pi 4's core) pins the emulated CPU: QEMU's default
# "max" model exposes SME, and XNNPACK's int8 kernels then compute wrong results. qemu-user
# shows the host's /proc/cpuinfo, which crashes the runtimes' CPU detection: a Pi-like
# cpuinfo is bind-mounted over it.
set -euo pipefail

command=${1:?usage: aarch64_device.sh build|start|stop ROOT [PORT]}
root=${2:?usage: aarch64_device.sh build|start|stop ROOT [PORT]}
port=${3:-2222}
qemu_cpu=${QEMU_CPU:-cortex-a72}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

binfmt() {
  if ! command -v qemu-aarch64-static >/dev/null || ! command -v debootstrap >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-user-static binfmt-support debootstrap
  fi
  mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
}

mounts() {
  mountpoint -q "$root/proc" || mount -t proc proc "$root/proc"
  mountpoint -q "$root/dev" || mount --bind /dev "$root/dev"
  # without /sys the runtimes' cpuinfo cannot list the CPUs and XNNPACK stays off
  mountpoint -q "$root/sys" || mount -t sysfs sysfs "$root/sys"
  grep -q " $root/proc/cpuinfo " /proc/mounts || mount --bind "$root/etc/edgecomp-cpuinfo" "$root/proc/cpuinfo"
}

case "$command" in
  build)
    binfmt
    if [ ! -x "$root/usr/bin/python3" ]; then
      debootstrap --arch=arm64 --variant=minbase \
        --include=python3,python3-venv,python3-pip,openssh-server,ca-certificates bookworm "$root" "$mirror"
    fi
    for core in 0 1 2 3; do
      printf 'processor\t: %s\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n' "$core"
    done > "$root/etc/edgecomp-cpuinfo"
    printf 'Hardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B (emulated by qemu-user)\n' >> "$root/etc/edgecomp-cpuinfo"
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    # pip in the device trusts what the host trusts (a TLS-inspecting proxy's CA, say)
    cp "${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}" "$root/etc/ssl/certs/ca-certificates.crt"
    mounts
    QEMU_CPU=$qemu_cpu PIP_CERT=/etc/ssl/certs/ca-certificates.crt chroot "$root" /bin/sh -euc '
      /opt/litert/bin/python3 -c "import ai_edge_litert" 2>/dev/null \
        || { python3 -m venv /opt/litert && /opt/litert/bin/pip install -q ai-edge-litert numpy; }
      /opt/tflite214/bin/python3 -c "import tflite_runtime" 2>/dev/null \
        || { python3 -m venv /opt/tflite214 && /opt/tflite214/bin/pip install -q tflite-runtime==2.14.0 "numpy<2"; }'
    echo "built $root: /opt/litert (ai-edge-litert), /opt/tflite214 (tflite-runtime 2.14, numpy<2)"
    ;;
  start)
    binfmt
    mounts
    mkdir -p "$root/run/sshd" "$root/root/.ssh" "$root/etc/edgecomp"
    keys="$root/etc/edgecomp"
    [ -f "$keys/host" ] || ssh-keygen -q -t ed25519 -N "" -f "$keys/host"
    [ -f "$keys/client" ] || ssh-keygen -q -t ed25519 -N "" -f "$keys/client"
    cp "$keys/client.pub" "$root/root/.ssh/authorized_keys"
    printf '[127.0.0.1]:%s %s\n' "$port" "$(cut -d' ' -f1,2 "$keys/host.pub")" > "$keys/known_hosts"
    cat > "$root/etc/ssh/sshd_config_edgecomp" <<EOF
ListenAddress 127.0.0.1
Port $port
HostKey /etc/edgecomp/host
AuthorizedKeysFile /root/.ssh/authorized_keys
PidFile /run/sshd_edgecomp.pid
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
SetEnv QEMU_CPU=$qemu_cpu
Subsystem sftp internal-sftp
EOF
    QEMU_CPU=$qemu_cpu chroot "$root" /usr/sbin/sshd -f /etc/ssh/sshd_config_edgecomp
    echo "--device=ssh://root@127.0.0.1:$port?python=/opt/litert/bin/python3" \
         "--ssh_option=-i --ssh_option=$keys/client --ssh_option=-o --ssh_option=UserKnownHostsFile=$keys/known_hosts" \
         "--ssh_option=-o --ssh_option=IdentitiesOnly=yes"
    ;;
  stop)
    if [ -f "$root/run/sshd_edgecomp.pid" ]; then kill "$(cat "$root/run/sshd_edgecomp.pid")" || true; fi
    for mount in proc/cpuinfo proc sys dev; do
      if grep -q " $root/$mount " /proc/mounts; then umount "$root/$mount" || umount -l "$root/$mount"; fi
    done
    echo "stopped $root"
    ;;
  *) echo "usage: aarch64_device.sh build|start|stop ROOT [PORT]" >&2; exit 2 ;;
esac
