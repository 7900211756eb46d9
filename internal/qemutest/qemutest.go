// Package qemutest boots small QEMU guests for tests: Debian's kernel
// (fetched with apt-get download, kept in a cache directory), an initrd
// built here (a newc cpio of Debian's static busybox, the virtio-net
// modules and an /init script) and qemu-system-x86_64. Each guest brings
// up eth0 with an address, pings a peer, prints marker lines on its
// serial console and powers off.
package qemutest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// Markers the guest prints on its console.
const (
	MarkUp     = "IPN-GUEST-UP"
	MarkPingOK = "IPN-PING-OK"
	MarkFail   = "IPN-PING-FAIL"
)

// modules are the kernel modules virtio-net needs in Debian's kernel, in
// the order they load.
var modules = []string{"virtio", "virtio_ring", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci", "failover", "net_failover", "virtio_net"}

// Need fails (under CI) or skips the test unless the programs a guest
// needs are here.
func Need(t testing.TB) {
	t.Helper()
	for _, p := range []string{"qemu-system-x86_64", "apt-get", "apt-cache", "dpkg-deb", "xz"} {
		if _, err := exec.LookPath(p); err != nil {
			missing(t, "%s is missing (Debian: apt-get install qemu-system-x86)", p)
		}
	}
	if _, err := busybox(); err != nil {
		missing(t, "%v", err)
	}
}

func missing(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

// busybox returns the path of a statically linked busybox.
func busybox() (string, error) {
	for _, p := range []string{"/bin/busybox", "/usr/bin/busybox"} {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		if !bytes.Contains(b, []byte("/lib64/ld-linux")) && !bytes.Contains(b, []byte("/lib/ld-linux")) {
			return p, nil
		}
	}
	return "", errors.New("no static busybox (Debian: apt-get install busybox-static)")
}

// CacheDir is where the kernel and its modules are kept between runs:
// $IPN_QEMU_CACHE, or ipn-qemu in the user's cache directory.
func CacheDir() string {
	if d := os.Getenv("IPN_QEMU_CACHE"); d != "" {
		return d
	}
	d, err := os.UserCacheDir()
	if err != nil {
		d = os.TempDir()
	}
	return filepath.Join(d, "ipn-qemu")
}

var (
	kernelOnce sync.Once
	kernelDir  string
	kernelErr  error
)

// Kernel returns a directory with Debian's kernel (vmlinuz, and its ELF
// image vmlinux, which guests boot) and the
// modules virtio-net needs (NAME.ko), fetching them into CacheDir with
// apt-get download the first time.
func Kernel(t testing.TB) string {
	t.Helper()
	kernelOnce.Do(func() { kernelDir, kernelErr = fetchKernel(CacheDir()) })
	if kernelErr != nil {
		t.Fatal(kernelErr)
	}
	return kernelDir
}

// cached reports whether dir holds the kernel and every module.
func cached(dir string) bool {
	for _, f := range append([]string{"vmlinuz", "vmlinux"}, modFiles()...) {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			return false
		}
	}
	return true
}

func modFiles() []string {
	var l []string
	for _, m := range modules {
		l = append(l, m+".ko")
	}
	return l
}

var kernelPkg = regexp.MustCompile(`Depends: (linux-image-[0-9][^\s]*-amd64)\b`)

// fetchKernel fills dir (once: a complete dir is left alone) from the
// package linux-image-amd64 depends on.
func fetchKernel(dir string) (string, error) {
	if cached(dir) {
		return dir, nil
	}
	out, err := exec.Command("apt-cache", "depends", "linux-image-amd64").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("apt-cache depends linux-image-amd64: %v\n%s", err, out)
	}
	m := kernelPkg.FindSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("apt-cache depends linux-image-amd64 names no linux-image-*-amd64 (run apt-get update?):\n%s", out)
	}
	pkg := string(m[1])
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".ipn-qemu-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	os.Chmod(tmp, 0o755) // apt-get download runs as _apt where it can
	dl := exec.Command("apt-get", "download", pkg)
	dl.Dir = tmp
	if out, err := dl.CombinedOutput(); err != nil {
		return "", fmt.Errorf("apt-get download %s: %v\n%s", pkg, err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		return "", fmt.Errorf("apt-get download %s left %d .deb files in %s", pkg, len(debs), tmp)
	}
	x := filepath.Join(tmp, "x")
	if out, err := exec.Command("dpkg-deb", "-x", debs[0], x).CombinedOutput(); err != nil {
		return "", fmt.Errorf("dpkg-deb -x %s: %v\n%s", debs[0], err, out)
	}
	res := filepath.Join(tmp, "out")
	if err := os.Mkdir(res, 0o755); err != nil {
		return "", err
	}
	kernels, _ := filepath.Glob(filepath.Join(x, "boot", "vmlinuz-*"))
	if len(kernels) != 1 {
		return "", fmt.Errorf("%s holds %d /boot/vmlinuz-*, want 1", debs[0], len(kernels))
	}
	if err := copyFile(kernels[0], filepath.Join(res, "vmlinuz"), nil); err != nil {
		return "", err
	}
	if err := unpackKernel(filepath.Join(res, "vmlinuz"), filepath.Join(res, "vmlinux")); err != nil {
		return "", err
	}
	found := map[string]string{}
	filepath.WalkDir(filepath.Join(x, "lib", "modules"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			name := strings.TrimSuffix(strings.TrimSuffix(d.Name(), ".xz"), ".ko")
			found[name] = p
		}
		return nil
	})
	for _, m := range modules {
		p, ok := found[m]
		if !ok {
			return "", fmt.Errorf("%s has no module %s.ko (needed for virtio-net)", pkg, m)
		}
		var filter []string
		if strings.HasSuffix(p, ".xz") {
			filter = []string{"xz", "-dc"} // busybox's insmod takes no compressed module
		}
		if err := copyFile(p, filepath.Join(res, m+".ko"), filter); err != nil {
			return "", err
		}
	}
	os.RemoveAll(dir) // an incomplete one
	if err := os.Rename(res, dir); err != nil && !cached(dir) {
		return "", fmt.Errorf("keeping the kernel in %s: %w", dir, err)
	}
	return dir, nil
}

// xzMagic begins an xz stream: the compressed kernel inside a bzImage.
var xzMagic = []byte{0xfd, '7', 'z', 'X', 'Z', 0}

// unpackKernel writes the kernel's ELF image (vmlinux) from its bzImage
// (vmlinuz, whose payload Debian compresses with xz). QEMU boots the ELF
// through its PVH entry, with no BIOS boot and no decompression in the
// guest, which without KVM saves many seconds a boot.
func unpackKernel(vmlinuz, vmlinux string) error {
	b, err := os.ReadFile(vmlinuz)
	if err != nil {
		return err
	}
	i := bytes.Index(b, xzMagic)
	if i < 0 {
		return fmt.Errorf("%s: no xz payload found (the kernel is compressed otherwise)", vmlinuz)
	}
	out, err := os.Create(vmlinux)
	if err != nil {
		return err
	}
	defer out.Close()
	var stderr bytes.Buffer
	cmd := exec.Command("xz", "-dc", "--single-stream")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(b[i:]), out, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("xz -dc of the kernel in %s (Debian: apt-get install xz-utils): %v\n%s", vmlinuz, err, stderr.Bytes())
	}
	if err := out.Close(); err != nil {
		return err
	}
	if h, err := os.ReadFile(vmlinux); err != nil || !bytes.HasPrefix(h, []byte("\x7fELF")) {
		return fmt.Errorf("%s: the kernel's payload is not an ELF image", vmlinuz)
	}
	return nil
}

// copyFile copies src to dst, through the command filter if given.
func copyFile(src, dst string, filter []string) error {
	if filter != nil {
		out, err := os.Create(dst)
		if err != nil {
			return err
		}
		defer out.Close()
		var stderr bytes.Buffer
		cmd := exec.Command(filter[0], append(filter[1:], src)...)
		cmd.Stdout, cmd.Stderr = out, &stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("%s %s: %v\n%s", strings.Join(filter, " "), src, err, stderr.Bytes())
		}
		return out.Close()
	}
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o644)
}

// modDepends returns the modules a module's file says it needs (its
// modinfo "depends=" field).
func modDepends(ko []byte) []string {
	i := bytes.Index(ko, []byte("\x00depends="))
	if i < 0 {
		return nil
	}
	v := ko[i+len("\x00depends="):]
	if end := bytes.IndexByte(v, 0); end >= 0 {
		v = v[:end]
	}
	if len(v) == 0 {
		return nil
	}
	return strings.Split(string(v), ",")
}

// loadOrder orders mods so that each comes after those it depends on
// (which kernels change: 6.1.0-57's virtio needs virtio_ring, -48's did
// not); a dependency outside mods is an error.
func loadOrder(mods []string, deps map[string][]string) ([]string, error) {
	var order []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(m string) error
	visit = func(m string) error {
		switch state[m] {
		case 1:
			return fmt.Errorf("module %s depends on itself through %v", m, deps[m])
		case 2:
			return nil
		}
		if _, ok := deps[m]; !ok {
			return fmt.Errorf("module %s is needed but not among %v", m, mods)
		}
		state[m] = 1
		for _, d := range deps[m] {
			if err := visit(d); err != nil {
				return fmt.Errorf("%s: %w", m, err)
			}
		}
		state[m] = 2
		order = append(order, m)
		return nil
	}
	for _, m := range mods {
		if err := visit(m); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// initScript is the guest's /init. Its settings come from the kernel's
// command line, which passes unknown NAME=VALUE words to init as its
// environment: ipnip (ADDR/BITS of eth0), ipnpeer (the address to ping),
// ipnlinger (seconds to stay up after the ping, answering pings).
const initScript = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in ` + "MODULES" + `; do
	insmod /lib/modules/$m.ko || echo "IPN-GUEST insmod $m failed"
done
ip link set lo up
ip link set eth0 up
ip addr add "$ipnip" dev eth0
echo "` + MarkUp + ` $ipnip"
if ping -c 3 -w 40 "$ipnpeer"; then
	echo "` + MarkPingOK + ` $ipnpeer"
else
	echo "` + MarkFail + ` $ipnpeer"
fi
sleep "${ipnlinger:-0}"
poweroff -f
`

var (
	initrdOnce sync.Once
	initrdPath string
	initrdErr  error
)

// Initrd returns the path of the guests' initrd, built once a process
// into the kernel's directory.
func Initrd(t testing.TB) string {
	t.Helper()
	kdir := Kernel(t)
	initrdOnce.Do(func() {
		initrdPath = filepath.Join(kdir, "initrd.cpio")
		initrdErr = buildInitrd(initrdPath, kdir)
	})
	if initrdErr != nil {
		t.Fatal(initrdErr)
	}
	return initrdPath
}

func buildInitrd(path, kdir string) error {
	bb, err := busybox()
	if err != nil {
		return err
	}
	w := &cpio{}
	for _, d := range []string{"bin", "dev", "proc", "sys", "tmp", "lib", "lib/modules"} {
		w.dir(d)
	}
	w.node("dev/console", 0o020600, 5, 1)
	b, err := os.ReadFile(bb)
	if err != nil {
		return err
	}
	w.file("bin/busybox", 0o755, b)
	deps := map[string][]string{}
	for _, m := range modules {
		b, err := os.ReadFile(filepath.Join(kdir, m+".ko"))
		if err != nil {
			return err
		}
		w.file("lib/modules/"+m+".ko", 0o644, b)
		deps[m] = modDepends(b)
	}
	order, err := loadOrder(modules, deps)
	if err != nil {
		return err
	}
	w.file("init", 0o755, []byte(strings.Replace(initScript, "MODULES", strings.Join(order, " "), 1)))
	tmp := fmt.Sprintf("%s.%d", path, os.Getpid())
	if err := os.WriteFile(tmp, w.close(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// cpio writes the "newc" format the kernel unpacks into its initramfs.
type cpio struct {
	b   bytes.Buffer
	ino int
}

func (c *cpio) entry(name string, mode uint32, rdevMajor, rdevMinor int, data []byte) {
	c.ino++
	nlink := 1
	if mode&0o170000 == 0o040000 {
		nlink = 2
	}
	fmt.Fprintf(&c.b, "070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		c.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdevMajor, rdevMinor, len(name)+1, 0)
	c.b.WriteString(name)
	c.b.WriteByte(0)
	c.pad()
	c.b.Write(data)
	c.pad()
}

func (c *cpio) pad() {
	for c.b.Len()%4 != 0 {
		c.b.WriteByte(0)
	}
}

func (c *cpio) dir(name string) { c.entry(name, 0o040755, 0, 0, nil) }
func (c *cpio) node(name string, mode uint32, major, minor int) {
	c.entry(name, mode, major, minor, nil)
}
func (c *cpio) file(name string, perm uint32, data []byte) { c.entry(name, 0o100000|perm, 0, 0, data) }

func (c *cpio) close() []byte {
	c.entry("TRAILER!!!", 0, 0, 0, nil)
	return c.b.Bytes()
}

// kvm reports whether guests can use KVM: /dev/kvm opens and the CPU has
// virtualization (a /dev/kvm without it, in a VM with no nested
// virtualization, hangs the guest), unless IPN_QEMU_KVM=0. Else QEMU
// emulates the CPU (TCG): a guest boots in some seconds.
func kvm() bool {
	if os.Getenv("IPN_QEMU_KVM") == "0" {
		return false
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return false
	}
	f.Close()
	info, err := os.ReadFile("/proc/cpuinfo")
	return err == nil && regexp.MustCompile(`(?m)^flags\s*:.*\b(vmx|svm)\b`).Match(info)
}

// Guest is a running QEMU guest.
type Guest struct {
	Name  string
	cmd   *exec.Cmd
	lines chan string
	done  chan struct{}
	mu    sync.Mutex
	log   []string // every console line so far, guarded by mu
	err   error
}

// Config describes a guest: its address, its peer, its MAC and its
// -netdev option (without id=, which is n0).
type Config struct {
	Name   string
	Addr   string // eth0's ADDR/BITS
	Peer   string // the address it pings
	MAC    string
	Netdev string // e.g. "stream,server=off,addr.type=unix,addr.path=/tmp/s"
	Linger int    // seconds to stay up after the ping
}

// Start boots a guest; the test's cleanup kills it if it still runs.
func Start(t testing.TB, c Config) *Guest {
	t.Helper()
	kdir := Kernel(t)
	initrd := Initrd(t)
	args := []string{
		"-nodefaults", "-display", "none", "-no-reboot", "-m", "256",
		"-serial", "stdio",
		"-kernel", filepath.Join(kdir, "vmlinux"), "-initrd", initrd,
		"-append", fmt.Sprintf("console=ttyS0 quiet panic=-1 ipnip=%s ipnpeer=%s ipnlinger=%d", c.Addr, c.Peer, c.Linger),
		"-netdev", c.Netdev + ",id=n0",
		"-device", "virtio-net-pci,netdev=n0,mac=" + c.MAC,
	}
	if kvm() {
		args = append(args, "-enable-kvm", "-cpu", "host")
	}
	g := &Guest{Name: c.Name, lines: make(chan string, 4096), done: make(chan struct{})}
	g.cmd = exec.Command("qemu-system-x86_64", args...)
	out, err := g.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	g.cmd.Stderr = g.cmd.Stdout
	if err := g.cmd.Start(); err != nil {
		t.Fatalf("start qemu-system-x86_64: %v", err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			l := strings.TrimRight(sc.Text(), "\r")
			g.mu.Lock()
			g.log = append(g.log, l)
			g.mu.Unlock()
			select {
			case g.lines <- l:
			default: // no one reads them: the log has them
			}
		}
		g.err = g.cmd.Wait()
		close(g.lines)
		close(g.done)
	}()
	t.Cleanup(func() {
		g.Kill()
		if t.Failed() {
			t.Logf("guest %s (qemu-system-x86_64 %s); console:\n%s", g.Name, strings.Join(args, " "), g.Console())
		}
	})
	return g
}

// Console returns every console line so far.
func (g *Guest) Console() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return strings.Join(g.log, "\n")
}

// Expect waits until the guest prints a line that begins with prefix and
// returns it; it fails the test if the guest prints fail first (not
// empty), exits, or d passes.
func (g *Guest) Expect(t testing.TB, prefix, fail string, d time.Duration) string {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		select {
		case l, ok := <-g.lines:
			if !ok {
				t.Fatalf("guest %s exited (%v) before printing %q", g.Name, g.err, prefix)
			}
			if strings.HasPrefix(l, prefix) {
				return l
			}
			if fail != "" && strings.HasPrefix(l, fail) {
				t.Fatalf("guest %s: %s", g.Name, l)
			}
		case <-timer.C:
			t.Fatalf("guest %s printed no %q in %v", g.Name, prefix, d)
		}
	}
}

// Lines returns the console lines that contain s.
func (g *Guest) Lines(s string) []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	var l []string
	for _, x := range g.log {
		if strings.Contains(x, s) {
			l = append(l, x)
		}
	}
	return l
}

// Wait waits for QEMU to exit (the guest powered off), at most d.
func (g *Guest) Wait(t testing.TB, d time.Duration) error {
	t.Helper()
	select {
	case <-g.done:
		return g.err
	case <-time.After(d):
		t.Fatalf("guest %s still running after %v", g.Name, d)
	}
	return nil
}

// Kill stops QEMU and waits for it.
func (g *Guest) Kill() {
	g.cmd.Process.Kill()
	<-g.done
}
