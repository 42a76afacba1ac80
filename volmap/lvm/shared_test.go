package lvm

import (
	"errors"
	"slices"
	"testing"

	"github.com/volfs/volfs/volmap"
)

func TestParseLeaseHolder(t *testing.T) {
	const uuid = "Xy1Ab2-Cd3E-fG4h-Ij5K-lM6n-Op7Q-rS8tUv"
	dump := `  offset                            lockspace                                         resource  timestamp  own  gen lver
00000000                             lvm_vgS       7d3c0f3e-7a56-4f0c-8f55-1d2a3b4c5d6e.host1  0000002345 0001 0001
01048576                             lvm_vgS                                             VGLK 0000000000 0001 0001 12
70254592                             lvm_vgS                    ` + uuid + ` 0000002411 0002 0001 3
71303168                             lvm_vgS                    Other1-Cd3E-fG4h-Ij5K-lM6n-Op7Q-rS8tUv 0000000000 0001 0001 2
72351744                             lvm_vgS                    Shared-Cd3E-fG4h-Ij5K-lM6n-Op7Q-rS8tUv 0000000000 0002 0001 4
                                                                                                          0001 0003 SH
                                                                                                          0002 0001 SH
73400320                             lvm_vgS                    Next11-Cd3E-fG4h-Ij5K-lM6n-Op7Q-rS8tUv 0000000000 0001 0001 1
`
	for _, c := range []struct {
		uuid string
		want []int
	}{
		{uuid, []int{2}},
		{"Other1-Cd3E-fG4h-Ij5K-lM6n-Op7Q-rS8tUv", nil},         // released: timestamp 0
		{"Shared-Cd3E-fG4h-Ij5K-lM6n-Op7Q-rS8tUv", []int{1, 2}}, // held shared by hosts 1 and 2
		{"Next11-Cd3E-fG4h-Ij5K-lM6n-Op7Q-rS8tUv", nil},         // the SH rows above are not its
		{"absent-uuid", nil},
	} {
		if got := parseLeaseHolders(dump, c.uuid); !slices.Equal(got, c.want) {
			t.Errorf("parseLeaseHolders(%s) = %v, want %v", c.uuid, got, c.want)
		}
	}
}

func TestSharedVGMessages(t *testing.T) {
	held := &CmdError{Args: []string{"lvm", "lvchange"}, ExitCode: 5,
		Stderr: "  LV locked by other host: vgS/web\n  Failed to lock logical volume vgS/web.\n"}
	if !errors.Is(held, volmap.ErrInUse) || !lockedElsewhere(held) || held.lockFailure() {
		t.Errorf("LV locked by other host: want ErrInUse, not retried: %v", held)
	}
	sharedHere := &CmdError{Args: []string{"lvm", "lvresize"}, ExitCode: 5,
		Stderr: "  LV is already locked with incompatible mode: vgS/web\n"}
	if !errors.Is(sharedHere, volmap.ErrInUse) || sharedHere.lockFailure() {
		t.Errorf("LV locked with incompatible mode: want ErrInUse, not retried: %v", sharedHere)
	}
	vgBusy := &CmdError{Args: []string{"lvm", "lvcreate"}, ExitCode: 5,
		Stderr: "  Retrying ex lock on VG vgS\n  VG vgS lock failed: held by other host.\n"}
	if !vgBusy.lockFailure() || errors.Is(vgBusy, volmap.ErrInUse) {
		t.Errorf("VG lock held by other host: want a retried lock failure: %v", vgBusy)
	}
}

func TestParseLVsLockArgs(t *testing.T) {
	lvs, err := ParseLVs([]byte(`{"report":[{"lv":[{"lv_name":"web","lv_uuid":"u","lv_size":"4194304","lv_lockargs":"1.0.0:70254592"}]}]}`))
	if err != nil || len(lvs) != 1 || lvs[0].LockArgs != "1.0.0:70254592" {
		t.Fatalf("ParseLVs: %+v, %v", lvs, err)
	}
}
