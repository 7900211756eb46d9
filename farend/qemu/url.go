package qemu

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"github.com/ipn-project/ipn/endpoint"
)

// The URLs of the far ends, which cable registers:
//
//	qemu-stream:///PATH[?mode=OCTAL]                 listen at PATH (QEMU: -netdev stream,server=off)
//	qemu-stream+connect:///PATH                      connect to QEMU's server=on at PATH
//	qemu-dgram:///PATH?remote=QEMUPATH[&mode=OCTAL]  bind PATH, send to QEMU's local.path
const (
	SchemeStream  = "qemu-stream"
	SchemeConnect = "qemu-stream+connect"
	SchemeDgram   = "qemu-dgram"
)

// OpenStream opens the far end of a qemu-stream URL, spec being what
// follows "qemu-stream://": a listening stream, logging to stderr.
func OpenStream(_ context.Context, spec string) (endpoint.Endpoint, error) {
	path, opts, err := parse(SchemeStream, spec, "mode")
	if err != nil {
		return nil, err
	}
	mode, err := parseMode(SchemeStream, opts)
	if err != nil {
		return nil, err
	}
	return Listen(path, mode, os.Stderr)
}

// OpenConnect opens the far end of a qemu-stream+connect URL: a stream
// connected to QEMU's server, logging to stderr.
func OpenConnect(_ context.Context, spec string) (endpoint.Endpoint, error) {
	path, _, err := parse(SchemeConnect, spec)
	if err != nil {
		return nil, err
	}
	return Connect(path, os.Stderr)
}

// OpenDgram opens the far end of a qemu-dgram URL, logging to stderr.
func OpenDgram(_ context.Context, spec string) (endpoint.Endpoint, error) {
	path, opts, err := parse(SchemeDgram, spec, "remote", "mode")
	if err != nil {
		return nil, err
	}
	remote := opts.Get("remote")
	if remote == "" {
		return nil, fmt.Errorf("no remote: want %s://%s?remote=QEMUPATH, QEMUPATH being QEMU's local.path: %w", SchemeDgram, path, syscall.EINVAL)
	}
	if !strings.HasPrefix(remote, "/") {
		return nil, fmt.Errorf("remote %q: want an absolute path (QEMU's local.path): %w", remote, syscall.EINVAL)
	}
	remote = filepath.Clean(remote)
	if remote == path {
		return nil, fmt.Errorf("remote %q is the far end's own path: want QEMU's local.path, another socket: %w", remote, syscall.EINVAL)
	}
	mode, err := parseMode(SchemeDgram, opts)
	if err != nil {
		return nil, err
	}
	return ListenDgram(path, remote, mode, os.Stderr)
}

// parse splits spec, "/PATH[?OPTIONS]", into its absolute path and its
// options, refusing options not in allowed. Its errors wrap EINVAL: no
// retry makes them right.
func parse(scheme, spec string, allowed ...string) (string, url.Values, error) {
	path, query, _ := strings.Cut(spec, "?")
	if !strings.HasPrefix(path, "/") || path == "/" {
		return "", nil, fmt.Errorf("%q: want %s:///ABSOLUTE/PATH (three slashes: the path begins with /): %w", path, scheme, syscall.EINVAL)
	}
	path = filepath.Clean(path)
	opts, err := url.ParseQuery(query)
	if err != nil {
		return "", nil, fmt.Errorf("options %q: want KEY=VALUE&...: %v: %w", query, err, syscall.EINVAL)
	}
	keys := make([]string, 0, len(opts))
	for k := range opts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if !slices.Contains(allowed, k) {
			want := "none"
			if len(allowed) > 0 {
				want = strings.Join(allowed, ", ")
			}
			return "", nil, fmt.Errorf("unknown option %q (options of %s: %s): %w", k, scheme, want, syscall.EINVAL)
		}
		if len(opts[k]) > 1 {
			return "", nil, fmt.Errorf("option %q given %d times: want it once: %w", k, len(opts[k]), syscall.EINVAL)
		}
	}
	return path, opts, nil
}

// parseMode returns the mode option, octal, 0 if none.
func parseMode(scheme string, opts url.Values) (os.FileMode, error) {
	s, ok := opts["mode"]
	if !ok {
		return 0, nil
	}
	m, err := strconv.ParseUint(s[0], 8, 32)
	if err != nil || m == 0 || m > 0o777 {
		return 0, fmt.Errorf("mode %q: want octal permission bits from 1 to 777 (e.g. %s:///PATH?mode=0600): %w", s[0], scheme, syscall.EINVAL)
	}
	return os.FileMode(m), nil
}
