package bench

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clkTck is the kernel's USER_HZ, the unit of the CPU times in
// /proc/PID/stat; it is 100 on every Linux architecture Go supports.
const clkTck = 100

// ProcStat is one reading of a process's CPU time and resident memory.
type ProcStat struct {
	At       time.Time
	CPU      time.Duration // user + system time since the process started
	RSSBytes uint64
}

// ReadProc reads the CPU time and resident set size of process pid from
// /proc (Linux only).
func ReadProc(pid int) (ProcStat, error) {
	st := ProcStat{At: time.Now()}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return st, fmt.Errorf("bench: reading broker stats: %w (is --broker-pid right?)", err)
	}
	// The command name is in parentheses and may hold spaces: the fields
	// of interest are counted from the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return st, fmt.Errorf("bench: malformed /proc/%d/stat", pid)
	}
	f := bytes.Fields(b[i+1:])
	// After ')': state(3) ppid(4) ... utime(14) stime(15); f[0] is field 3.
	if len(f) < 13 {
		return st, fmt.Errorf("bench: short /proc/%d/stat", pid)
	}
	ut, err1 := strconv.ParseUint(string(f[11]), 10, 64)
	stt, err2 := strconv.ParseUint(string(f[12]), 10, 64)
	if err1 != nil || err2 != nil {
		return st, fmt.Errorf("bench: malformed CPU times in /proc/%d/stat", pid)
	}
	st.CPU = time.Duration(ut+stt) * (time.Second / clkTck)
	s, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return st, fmt.Errorf("bench: reading broker memory: %w", err)
	}
	for line := range bytes.SplitSeq(s, []byte{'\n'}) {
		if rest, ok := bytes.CutPrefix(line, []byte("VmRSS:")); ok {
			fs := bytes.Fields(rest)
			if len(fs) >= 1 {
				kb, err := strconv.ParseUint(string(fs[0]), 10, 64)
				if err == nil {
					st.RSSBytes = kb * 1024
				}
			}
			break
		}
	}
	return st, nil
}

// cpuPercent is the CPU used between two readings as a percentage of one
// core.
func cpuPercent(a, b ProcStat) float64 {
	wall := b.At.Sub(a.At)
	if wall <= 0 {
		return 0
	}
	return 100 * float64(b.CPU-a.CPU) / float64(wall)
}

// HostCPU is the machine's CPU time from the first line of /proc/stat, in
// clock ticks.
type HostCPU struct {
	Total, Idle, Steal uint64
}

// ReadHostCPU reads the machine's CPU counters (Linux only).
func ReadHostCPU() (HostCPU, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return HostCPU{}, fmt.Errorf("bench: reading /proc/stat: %w", err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return HostCPU{}, fmt.Errorf("bench: unexpected /proc/stat line %q", line)
	}
	var h HostCPU
	for i, s := range f[1:] {
		if i >= 8 { // guest time is already counted in user time
			break
		}
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return HostCPU{}, fmt.Errorf("bench: /proc/stat: %w", err)
		}
		h.Total += v
		switch i {
		case 3, 4: // idle, iowait
			h.Idle += v
		case 7:
			h.Steal = v
		}
	}
	return h, nil
}

// hostStats returns the machine's figures between a and b, or nil when
// either could not be read or no time passed.
func hostStats(a, b HostCPU, errA, errB error) *HostStats {
	if errA != nil || errB != nil || b.Total <= a.Total {
		return nil
	}
	t := float64(b.Total - a.Total)
	return &HostStats{
		StealPct: 100 * float64(b.Steal-a.Steal) / t,
		IdlePct:  100 * float64(b.Idle-a.Idle) / t,
	}
}
