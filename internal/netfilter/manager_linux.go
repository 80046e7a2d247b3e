package netfilter

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
)

// Manager owns banger's tables in the network namespace of the thread that
// calls it. Its methods are safe for concurrent use (they are serialised);
// each one locks the calling goroutine to its OS thread for its duration, so
// a caller that has entered a namespace on a locked thread gets everything
// (netlink, sysctls, the port check) done there.
type Manager struct {
	cfg Config
	mu  sync.Mutex
}

// New validates cfg and returns a Manager. It touches nothing.
func New(cfg Config) (*Manager, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.HostPorts = append([]HostPort(nil), cfg.HostPorts...)
	return &Manager{cfg: cfg}, nil
}

// Table returns the name of the tables (`inet NAME` and `bridge NAME`).
func (m *Manager) Table() string { return m.cfg.table() }

// run serialises op and runs it on a locked thread with a fresh session.
func (m *Manager) run(op func(s *session) error) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	s, err := m.open()
	if err != nil {
		return err
	}
	defer s.close()
	return op(s)
}

// Ensure creates the tables with the config's base policy (guest isolation)
// when they do not exist yet. Existing tables are left as they are (use
// Reconcile to rebuild them).
func (m *Manager) Ensure() error {
	return m.run(func(s *session) error {
		for _, fam := range families {
			if !s.present[fam] {
				s.addBase(m.cfg, fam)
			}
		}
		return s.flush("create tables")
	})
}

// Apply installs the rules of one VM, replacing any it had (applying the
// same VMRules twice leaves one rule set), in one atomic transaction. The
// tables are created with the base policy if missing. A published host port
// that another VM already publishes, or that a program on the host listens
// on, is refused. IPv4 forwarding (and route_localnet on the bridge, for
// ports reachable on 127.0.0.1) is switched on when some VM needs it.
func (m *Manager) Apply(v VMRules) error {
	if err := v.validate(m.cfg); err != nil {
		return err
	}
	return m.run(func(s *session) error {
		cur, err := s.read()
		if err != nil {
			return err
		}
		for _, t := range cur.tags() {
			if t.vm == v.ID || t.kind != kindPublish {
				continue
			}
			for _, p := range v.Publish {
				if p.overlaps(t.publish) {
					return fmt.Errorf("%w: cannot publish %s for VM %s: VM %s already publishes %s",
						ErrPortInUse, p, v.ID, t.vm, t.publish)
				}
			}
		}
		for _, p := range v.Publish {
			if err := CheckHostPortFree(p); err != nil {
				return fmt.Errorf("VM %s: %w", v.ID, err)
			}
		}
		want := vmRuleDefs(m.cfg, v)
		if cur.hasVMRules(v.ID, want) {
			// Already in place exactly: leave the rules (and their
			// position in the chains) alone.
			return m.syncSysctls(s)
		}
		for _, fam := range families {
			if !s.present[fam] {
				s.addBase(m.cfg, fam)
				continue
			}
			if err := s.delVM(cur, fam, v.ID); err != nil {
				return err
			}
		}
		for _, r := range want {
			s.addRule(r)
		}
		if err := s.flush("apply rules of VM " + v.ID); err != nil {
			return err
		}
		return m.syncSysctls(s)
	})
}

// Remove deletes every rule of the VM (nothing to remove is not an error)
// and switches forwarding back off when no VM needs it any more.
func (m *Manager) Remove(vmID string) error {
	return m.run(func(s *session) error {
		cur, err := s.read()
		if err != nil {
			return err
		}
		for _, fam := range families {
			if err := s.delVM(cur, fam, vmID); err != nil {
				return err
			}
		}
		if err := s.flush("remove rules of VM " + vmID); err != nil {
			return err
		}
		return m.syncSysctls(s)
	})
}

// Reconcile rebuilds both tables from the config and the desired VMs in one
// atomic transaction (rules of VMs not listed are gone, base rules follow
// the current config), reads them back and compares them with what was
// meant, then brings the sysctls in line. Records of sysctls banger changed
// survive the rebuild. Host ports are not probed here: the published ports
// were banger's own before the restart.
func (m *Manager) Reconcile(desired []VMRules) error {
	if err := validateDesired(m.cfg, desired); err != nil {
		return fmt.Errorf("reconcile: %w", err)
	}
	return m.run(func(s *session) error {
		cur, err := s.read()
		if err != nil {
			return err
		}
		want := expected(m.cfg, desired, cur.records())
		for _, fam := range families {
			if s.present[fam] {
				s.delTable(fam)
			}
			s.addTable(fam)
		}
		for _, r := range want {
			s.addRule(r)
		}
		if err := s.flush("rebuild tables"); err != nil {
			return err
		}
		if err := s.verify(want); err != nil {
			return fmt.Errorf("reconcile: tables read back differ from what was written: %w", err)
		}
		return m.syncSysctls(s)
	})
}

// Verify reads the tables back and compares them with what Reconcile(desired)
// would write; nil means they match exactly.
func (m *Manager) Verify(desired []VMRules) error {
	if err := validateDesired(m.cfg, desired); err != nil {
		return err
	}
	return m.run(func(s *session) error {
		cur, err := s.read()
		if err != nil {
			return err
		}
		return s.verify(expected(m.cfg, desired, cur.records()))
	})
}

// VMs returns the ids of the VMs that have rules in the tables, sorted.
func (m *Manager) VMs() ([]string, error) {
	var out []string
	err := m.run(func(s *session) error {
		cur, err := s.read()
		if err != nil {
			return err
		}
		seen := map[string]bool{}
		for _, t := range cur.tags() {
			seen[t.vm] = true
		}
		out = sortedKeys(seen)
		return nil
	})
	return out, err
}

// Teardown restores every sysctl banger changed to its recorded value and
// deletes both tables. Without tables it does nothing.
func (m *Manager) Teardown() error {
	return m.run(func(s *session) error {
		var errs []error
		if s.present[nftables.TableFamilyINet] {
			cur, err := s.read()
			if err != nil {
				return err
			}
			records := cur.records()
			for _, knob := range sortedKeys(records) {
				if err := restoreKnob(knob, records[knob].prior); err != nil {
					errs = append(errs, err)
				}
			}
		}
		for _, fam := range families {
			if s.present[fam] {
				s.delTable(fam)
			}
		}
		if err := s.flush("delete tables"); err != nil {
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	})
}

// expected is the full content Reconcile writes, in order.
func expected(c Config, desired []VMRules, records map[string]record) []ruleDef {
	rs := baseRules(c)
	for _, knob := range sortedKeys(records) {
		rs = append(rs, stateRule(knob, records[knob].prior))
	}
	vms := append([]VMRules(nil), desired...)
	sort.SliceStable(vms, func(i, j int) bool { return vms[i].ID < vms[j].ID })
	for _, v := range vms {
		rs = append(rs, vmRuleDefs(c, v)...)
	}
	return rs
}

// --- session: one netlink connection for the duration of an operation ---

type session struct {
	table   string
	c       *nftables.Conn
	tables  map[nftables.TableFamily]*nftables.Table
	present map[nftables.TableFamily]bool
	dirty   bool
}

func (m *Manager) open() (*session, error) {
	c, err := nftables.New(nftables.AsLasting())
	if err != nil {
		return nil, fmt.Errorf("nftables: open netlink: %w", err)
	}
	s := &session{table: m.cfg.table(), c: c,
		tables: map[nftables.TableFamily]*nftables.Table{}, present: map[nftables.TableFamily]bool{}}
	for _, fam := range families {
		s.tables[fam] = &nftables.Table{Name: s.table, Family: fam}
	}
	if err := s.refresh(); err != nil {
		s.close()
		return nil, err
	}
	return s, nil
}

// refresh finds out which of the two tables exist.
func (s *session) refresh() error {
	for _, fam := range families {
		ts, err := s.c.ListTablesOfFamily(fam)
		if err != nil {
			return fmt.Errorf("nftables: list %s tables: %w", familyName(fam), err)
		}
		s.present[fam] = false
		for _, t := range ts {
			if t.Name == s.table {
				s.present[fam] = true
			}
		}
	}
	return nil
}

func (s *session) close() { _ = s.c.CloseLasting() }

func (s *session) chain(fam nftables.TableFamily, name string) *nftables.Chain {
	return &nftables.Chain{Name: name, Table: s.tables[fam]}
}

// addTable queues the table and its chains (base chains with policy accept:
// banger's rules drop only what they match).
func (s *session) addTable(fam nftables.TableFamily) {
	s.c.AddTable(s.tables[fam])
	for _, d := range chainDefs {
		if d.family != fam {
			continue
		}
		ch := &nftables.Chain{Name: d.name, Table: s.tables[fam]}
		if d.hook != nil {
			policy := nftables.ChainPolicyAccept
			ch.Type, ch.Hooknum, ch.Priority, ch.Policy = d.typ, d.hook, d.prio, &policy
		}
		s.c.AddChain(ch)
	}
	s.dirty = true
}

func (s *session) delTable(fam nftables.TableFamily) {
	s.c.DelTable(s.tables[fam])
	s.dirty = true
}

func (s *session) addBase(c Config, fam nftables.TableFamily) {
	s.addTable(fam)
	for _, r := range baseRules(c) {
		if r.family == fam {
			s.addRule(r)
		}
	}
}

func (s *session) addRule(r ruleDef) {
	s.c.AddRule(&nftables.Rule{
		Table:    s.tables[r.family],
		Chain:    s.chain(r.family, r.chain),
		Exprs:    r.exprs,
		UserData: userdata.AppendString(nil, userdata.TypeComment, r.comment),
	})
	s.dirty = true
}

func (s *session) delRule(r *nftables.Rule, fam nftables.TableFamily, chain string) error {
	s.dirty = true
	return s.c.DelRule(&nftables.Rule{Table: s.tables[fam], Chain: s.chain(fam, chain), Handle: r.Handle})
}

// delVM queues the deletion of every rule tagged with the VM id.
func (s *session) delVM(cur *snapshot, fam nftables.TableFamily, vmID string) error {
	for _, ch := range cur.chains[fam] {
		for _, r := range cur.rules[fam][ch.Name] {
			if t, ok := parseTag(comment(r)); ok && t.vm == vmID {
				if err := s.delRule(r, fam, ch.Name); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func (s *session) flush(what string) error {
	if !s.dirty {
		return nil
	}
	s.dirty = false
	if err := s.c.Flush(); err != nil {
		return fmt.Errorf("nftables: %s in table %s: %w", what, s.table, err)
	}
	return nil
}

// snapshot is the tables as read from the kernel.
type snapshot struct {
	chains map[nftables.TableFamily][]*nftables.Chain
	rules  map[nftables.TableFamily]map[string][]*nftables.Rule
}

func (s *session) read() (*snapshot, error) {
	if err := s.refresh(); err != nil {
		return nil, err
	}
	snap := &snapshot{chains: map[nftables.TableFamily][]*nftables.Chain{},
		rules: map[nftables.TableFamily]map[string][]*nftables.Rule{}}
	for _, fam := range families {
		snap.rules[fam] = map[string][]*nftables.Rule{}
		if !s.present[fam] {
			continue
		}
		chains, err := s.c.ListChainsOfTableFamily(fam)
		if err != nil {
			return nil, fmt.Errorf("nftables: list %s chains: %w", familyName(fam), err)
		}
		for _, ch := range chains {
			if ch.Table == nil || ch.Table.Name != s.table {
				continue
			}
			rules, err := s.c.GetRules(s.tables[fam], ch)
			if err != nil {
				return nil, fmt.Errorf("nftables: list rules of %s %s %s: %w", familyName(fam), s.table, ch.Name, err)
			}
			snap.chains[fam] = append(snap.chains[fam], ch)
			snap.rules[fam][ch.Name] = rules
		}
		sort.Slice(snap.chains[fam], func(i, j int) bool { return snap.chains[fam][i].Name < snap.chains[fam][j].Name })
	}
	return snap, nil
}

func comment(r *nftables.Rule) string {
	c, _ := userdata.GetString(r.UserData, userdata.TypeComment)
	return c
}

// tags returns the parsed comments of every per-VM rule.
func (snap *snapshot) tags() []tag {
	var out []tag
	for _, fam := range families {
		for _, ch := range snap.chains[fam] {
			for _, r := range snap.rules[fam][ch.Name] {
				if t, ok := parseTag(comment(r)); ok {
					out = append(out, t)
				}
			}
		}
	}
	return out
}

// hasVMRules reports whether the tables hold exactly want as the rules of
// VM id (same chains, same order within each chain, same expressions).
func (snap *snapshot) hasVMRules(id string, want []ruleDef) bool {
	for _, fam := range families {
		if len(snap.chains[fam]) == 0 {
			return false
		}
		for _, d := range chainDefs {
			if d.family != fam {
				continue
			}
			var have []*nftables.Rule
			for _, r := range snap.rules[fam][d.name] {
				if t, ok := parseTag(comment(r)); ok && t.vm == id {
					have = append(have, r)
				}
			}
			var w []ruleDef
			for _, r := range want {
				if r.family == fam && r.chain == d.name {
					w = append(w, r)
				}
			}
			if compareRules(fam, w, have) != nil {
				return false
			}
		}
	}
	return true
}

type record struct {
	prior string
	rule  *nftables.Rule
}

// records returns the state records (sysctls banger changed) by knob.
func (snap *snapshot) records() map[string]record {
	out := map[string]record{}
	for _, r := range snap.rules[nftables.TableFamilyINet][chainState] {
		if knob, prior, ok := parseState(comment(r)); ok {
			out[knob] = record{prior: prior, rule: r}
		}
	}
	return out
}

// verify compares the tables in the kernel with want: the same chains
// (type, hook, priority, policy) and, chain by chain, the same rules in the
// same order (comment and expressions, compared in their netlink encoding).
func (s *session) verify(want []ruleDef) error {
	got, err := s.read()
	if err != nil {
		return err
	}
	var errs []error
	for _, fam := range families {
		fn := familyName(fam)
		have := map[string]*nftables.Chain{}
		for _, ch := range got.chains[fam] {
			have[ch.Name] = ch
		}
		for _, d := range chainDefs {
			if d.family != fam {
				continue
			}
			ch, ok := have[d.name]
			if !ok {
				errs = append(errs, fmt.Errorf("%s %s: chain %s missing", fn, s.table, d.name))
				continue
			}
			delete(have, d.name)
			if err := checkChain(d, ch); err != nil {
				errs = append(errs, fmt.Errorf("%s %s: chain %s: %w", fn, s.table, d.name, err))
			}
			var wantRules []ruleDef
			for _, r := range want {
				if r.family == fam && r.chain == d.name {
					wantRules = append(wantRules, r)
				}
			}
			if err := compareRules(fam, wantRules, got.rules[fam][d.name]); err != nil {
				errs = append(errs, fmt.Errorf("%s %s: chain %s: %w", fn, s.table, d.name, err))
			}
		}
		for name := range have {
			errs = append(errs, fmt.Errorf("%s %s: unexpected chain %s", fn, s.table, name))
		}
	}
	return errors.Join(errs...)
}

func checkChain(d chainDef, ch *nftables.Chain) error {
	if d.hook == nil {
		if ch.Hooknum != nil {
			return errors.New("is a base chain, want a regular one")
		}
		return nil
	}
	switch {
	case ch.Hooknum == nil || *ch.Hooknum != *d.hook:
		return fmt.Errorf("hook %v, want %d", ptrStr(ch.Hooknum), *d.hook)
	case ch.Priority == nil || *ch.Priority != *d.prio:
		return fmt.Errorf("priority %v, want %d", ptrStr(ch.Priority), *d.prio)
	case ch.Type != d.typ:
		return fmt.Errorf("type %q, want %q", ch.Type, d.typ)
	case ch.Policy == nil || *ch.Policy != nftables.ChainPolicyAccept:
		return fmt.Errorf("policy %v, want accept", ptrStr(ch.Policy))
	}
	return nil
}

func ptrStr[T any](p *T) string {
	if p == nil {
		return "none"
	}
	return fmt.Sprint(*p)
}

func compareRules(fam nftables.TableFamily, want []ruleDef, got []*nftables.Rule) error {
	if len(want) != len(got) {
		return fmt.Errorf("%d rules, want %d (have: %s)", len(got), len(want), ruleComments(got))
	}
	for i := range want {
		if c := comment(got[i]); c != want[i].comment {
			return fmt.Errorf("rule %d is %q, want %q", i, c, want[i].comment)
		}
		if err := sameExprs(fam, want[i].exprs, got[i].Exprs); err != nil {
			return fmt.Errorf("rule %d (%q): %w", i, want[i].comment, err)
		}
	}
	return nil
}

func sameExprs(fam nftables.TableFamily, want, got []expr.Any) error {
	if len(want) != len(got) {
		return fmt.Errorf("%d expressions, want %d", len(got), len(want))
	}
	for i := range want {
		w, err1 := expr.Marshal(byte(fam), want[i])
		g, err2 := expr.Marshal(byte(fam), got[i])
		if err := errors.Join(err1, err2); err != nil {
			return fmt.Errorf("expression %d: %w", i, err)
		}
		if !bytes.Equal(w, g) {
			return fmt.Errorf("expression %d is %T%+v, want %T%+v", i, got[i], got[i], want[i], want[i])
		}
	}
	return nil
}

func ruleComments(rs []*nftables.Rule) string {
	var cs []string
	for _, r := range rs {
		cs = append(cs, fmt.Sprintf("%q", comment(r)))
	}
	return strings.Join(cs, ", ")
}

// --- sysctls ---

const knobIPForward = "ip_forward"

// localnetKnob names route_localnet of the bridge.
func localnetKnob(bridge string) string { return "conf." + bridge + ".route_localnet" }

func knobPath(knob string) (string, error) {
	if knob == knobIPForward {
		return "/proc/sys/net/ipv4/ip_forward", nil
	}
	if dev, ok := strings.CutPrefix(knob, "conf."); ok {
		if dev, ok := strings.CutSuffix(dev, ".route_localnet"); ok && validateToken("interface", dev, 15) == nil {
			return "/proc/sys/net/ipv4/conf/" + dev + "/route_localnet", nil
		}
	}
	return "", fmt.Errorf("unknown sysctl record %q", knob)
}

func readKnob(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

func writeKnob(path, v string) error {
	if err := os.WriteFile(path, []byte(v+"\n"), 0o644); err != nil {
		return fmt.Errorf("set %s to %s: %w", path, v, err)
	}
	return nil
}

// restoreKnob writes a recorded prior value back; a knob whose file is gone
// (the bridge was deleted) needs nothing.
func restoreKnob(knob, prior string) error {
	path, err := knobPath(knob)
	if err != nil {
		return err
	}
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return writeKnob(path, prior)
}

// syncSysctls derives what the VMs in the tables need and sets the sysctls
// accordingly. Switching a knob on first records its prior value in the
// state chain (so that a restarted daemon, or Teardown, can still restore
// it); switching it back off restores that value and drops the record. A
// knob that was already on is never recorded, so it is never switched off.
func (m *Manager) syncSysctls(s *session) error {
	cur, err := s.read()
	if err != nil {
		return err
	}
	need := map[string]bool{knobIPForward: false, localnetKnob(m.cfg.Bridge): false}
	for _, t := range cur.tags() {
		switch t.kind {
		case kindNAT:
			need[knobIPForward] = true
		case kindPublish:
			need[knobIPForward] = true
			if t.publish.coversLoopback() {
				need[localnetKnob(m.cfg.Bridge)] = true
			}
		}
	}
	records := cur.records()
	for knob := range records {
		if _, ok := need[knob]; !ok {
			need[knob] = false // a record of another bridge: restore it
		}
	}
	var errs []error
	for _, knob := range sortedKeys(need) {
		rec, recorded := records[knob]
		path, err := knobPath(knob)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !need[knob] {
			if !recorded {
				continue
			}
			if err := restoreKnob(knob, rec.prior); err != nil {
				errs = append(errs, err)
				continue
			}
			if err := s.delRule(rec.rule, nftables.TableFamilyINet, chainState); err != nil {
				errs = append(errs, err)
				continue
			}
			if err := s.flush("drop record of " + knob); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		v, err := readKnob(path)
		if errors.Is(err, os.ErrNotExist) && knob != knobIPForward {
			errs = append(errs, fmt.Errorf("published ports on 127.0.0.1 need route_localnet on bridge %s, which does not exist", m.cfg.Bridge))
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if v == "1" {
			continue
		}
		if !recorded {
			if len(cur.chains[nftables.TableFamilyINet]) == 0 {
				errs = append(errs, fmt.Errorf("cannot record %s: table inet %s missing", knob, s.table))
				continue
			}
			s.addRule(stateRule(knob, v))
			if err := s.flush("record " + knob); err != nil {
				errs = append(errs, err)
				continue
			}
		}
		if err := writeKnob(path, "1"); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
