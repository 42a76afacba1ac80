package lvm

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
)

// lvm2 commands of another tool racing volfs: while an admin's loop
// creates, tags, renames, extends and removes LVs of the same VG (and adds
// and drops a tag of its own on a file volfs serves), files are copied,
// renamed, verified and removed through the mount. No command of either
// side fails, no byte is wrong, the server stays up, the admin's tag
// survives volfs's own tag writes, and the listing ends up showing exactly
// what is there.
func TestFaultExternalLVM(t *testing.T) {
	rounds := faultIterations(t, 1)
	e := newVG(t)
	m := e.mount()
	keep := e.file("keep", 2*mib+5, 21)
	sh(t, "cp", keep, m.path("keep"))
	pid := m.serverPid()

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var extErr []string
	extRounds := 0
	wg.Add(1)
	go func() {
		defer wg.Done()
		for k := 0; ; k++ {
			select {
			case <-stop:
				return
			default:
			}
			a, b := fmt.Sprintf("ext%d", k), fmt.Sprintf("ext%dr", k)
			steps := [][]string{
				{"lvcreate", "-q", "-Wy", "-Zy", "-L", "4m", "-n", a, e.vg},
				{"lvchange", "-q", "--addtag", "admin.note=x" + a, e.vg + "/" + a},
				{"lvchange", "-q", "--addtag", "admin.backup=yes", e.vg + "/keep"},
				{"lvrename", "-q", e.vg, a, b},
				{"lvextend", "-q", "-L", "+4m", e.vg + "/" + b},
				{"lvchange", "-q", "--deltag", "admin.backup=yes", e.vg + "/keep"},
				{"lvremove", "-q", "-f", e.vg + "/" + b},
			}
			for _, s := range steps {
				if out, err := try(s[0], s[1:]...); err != nil {
					extErr = append(extErr, fmt.Sprintf("%s: %v: %s", strings.Join(s, " "), err, out))
				}
			}
			extRounds++
		}
	}()

	srcs := []string{e.file("s0", 3*mib+333, 22), e.file("s1", mib, 23), e.file("s2", 5*mib+1, 24)}
	for i := range rounds {
		for j, src := range srcs {
			c, d := fmt.Sprintf("c%d_%d", i, j), fmt.Sprintf("d%d_%d", i, j)
			sh(t, "cp", src, m.path(c))
			sameData(t, m.path(c), src)
			sh(t, "mv", m.path(c), m.path(d))
			sameData(t, m.path(d), src)
			sh(t, "truncate", "-s", "+1M", m.path(d))
			sameDataPrefix(t, m.path(d), src, size(t, src))
		}
		for j := range srcs {
			sh(t, "rm", m.path(fmt.Sprintf("d%d_%d", i, j)))
		}
		sameData(t, m.path("keep"), keep)
		sh(t, "touch", m.path("keep")) // a tag write of volfs's own
	}
	close(stop)
	wg.Wait()
	t.Logf("%d rounds of the admin's lvm loop ran alongside", extRounds)
	for _, s := range extErr {
		t.Errorf("the admin's command failed: %s", s)
	}
	if gone(pid) {
		t.Fatal("the server died")
	}
	sameData(t, m.path("keep"), keep)
	waitFor(t, "the listing shows only keep", 2*externalDelay, func() bool {
		return slices.Equal(m.names(), []string{"keep"})
	})
	if got := e.files(); !slices.Equal(got, []string{"keep"}) {
		t.Fatalf("LVs left: %v", got)
	}
	if l := e.lv("keep"); l.hasTag("admin.backup=yes") {
		t.Errorf("keep still has the admin's tag the admin removed: %v", l.Tags)
	}
	// The admin's tag and volfs's own tags coexist.
	sh(t, "lvchange", "-q", "--addtag", "admin.backup=yes", e.vg+"/keep")
	sh(t, "touch", "-d", "2020-01-02", m.path("keep"))
	m.remount()
	l := e.lv("keep")
	if !l.hasTag("admin.backup=yes") {
		t.Errorf("volfs's tag writes dropped the admin's tag: %v", l.Tags)
	}
	if st := size(t, m.path("keep")); st != size(t, keep) {
		t.Errorf("keep: size %d", st)
	}
}
