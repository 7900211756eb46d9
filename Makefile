# Build and install ipn: make, then make install (as root for /usr/local).
#
#   make install                          # under /usr/local
#   make install PREFIX=/usr DESTDIR=/tmp/pkg   # staged, for a package
#   make uninstall                        # the same variables remove it
#
# PREFIX is where ipn lives once installed; DESTDIR, if given, is a root
# the files are written under instead of /, as packagers stage them.
# Every directory below can be set on its own.
PREFIX      ?= /usr/local
DESTDIR     ?=
BINDIR      ?= $(PREFIX)/bin
MANDIR      ?= $(PREFIX)/share/man
# systemd reads units from /usr/local/lib/systemd/system and
# /usr/lib/systemd/system alike.
UNITDIR     ?= $(PREFIX)/lib/systemd/system
USERUNITDIR ?= $(PREFIX)/lib/systemd/user
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
ZSHCOMPDIR  ?= $(PREFIX)/share/zsh/site-functions
FISHCOMPDIR ?= $(PREFIX)/share/fish/vendor_completions.d

GO      ?= go
# The release ipn version prints; a git tree's description by default.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
# Where the build's files go before they are installed.
BUILD   ?= build

LDFLAGS := -X github.com/ipn-project/ipn/internal/spec.Version=$(VERSION)
UNITS   := ipn.socket ipn.service

.PHONY: all install uninstall clean FORCE

all: $(BUILD)/ipn
	rm -rf $(BUILD)/man $(BUILD)/completion $(BUILD)/.built
	mkdir -p $(BUILD)/completion
	$(BUILD)/ipn gen-man $(BUILD)/man
	$(BUILD)/ipn completion bash > $(BUILD)/completion/ipn
	$(BUILD)/ipn completion zsh > $(BUILD)/completion/_ipn
	$(BUILD)/ipn completion fish > $(BUILD)/completion/ipn.fish
	touch $(BUILD)/.built

# go decides what to rebuild.
$(BUILD)/ipn: FORCE
	$(GO) build -buildvcs=auto -ldflags '$(LDFLAGS)' -o $@ ./cmd/ipn

# install copies what make built, building only if nothing was: make as
# a user, then sudo make install, builds nothing as root.
$(BUILD)/.built:
	$(MAKE) all

install: $(BUILD)/.built
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(UNITDIR) $(DESTDIR)$(USERUNITDIR) \
		$(DESTDIR)$(BASHCOMPDIR) $(DESTDIR)$(ZSHCOMPDIR) $(DESTDIR)$(FISHCOMPDIR)
	install -m 0755 $(BUILD)/ipn $(DESTDIR)$(BINDIR)/ipn
	install -m 0644 $(BUILD)/man/*.1 $(DESTDIR)$(MANDIR)/man1/
	for u in $(UNITS); do \
		sed 's|/usr/local/bin/ipn|$(BINDIR)/ipn|g' dist/systemd/$$u > $(DESTDIR)$(UNITDIR)/$$u && \
		sed 's|/usr/local/bin/ipn|$(BINDIR)/ipn|g' dist/systemd/user/$$u > $(DESTDIR)$(USERUNITDIR)/$$u && \
		chmod 0644 $(DESTDIR)$(UNITDIR)/$$u $(DESTDIR)$(USERUNITDIR)/$$u || exit 1; \
	done
	install -m 0644 $(BUILD)/completion/ipn $(DESTDIR)$(BASHCOMPDIR)/ipn
	install -m 0644 $(BUILD)/completion/_ipn $(DESTDIR)$(ZSHCOMPDIR)/_ipn
	install -m 0644 $(BUILD)/completion/ipn.fish $(DESTDIR)$(FISHCOMPDIR)/ipn.fish

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/ipn $(DESTDIR)$(MANDIR)/man1/ipn.1 $(DESTDIR)$(MANDIR)/man1/ipn-*.1
	for u in $(UNITS); do rm -f $(DESTDIR)$(UNITDIR)/$$u $(DESTDIR)$(USERUNITDIR)/$$u; done
	rm -f $(DESTDIR)$(BASHCOMPDIR)/ipn $(DESTDIR)$(ZSHCOMPDIR)/_ipn $(DESTDIR)$(FISHCOMPDIR)/ipn.fish

clean:
	rm -rf $(BUILD)
