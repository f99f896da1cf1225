"""Memory a stranger can make the public listener hold with unfinished request heads.

Usage: python3 benches/head_memory.py PATH/TO/hubgate PORT
Starts hubgate on 127.0.0.1:PORT (API on PORT+1), opens 100 connections, each sending a
request line, Host and 880 header lines of 1 KB without the blank line (880 KB), and prints
hubgate's RSS (/proc/PID/status) before and with them held. Loopback only; every socket and
the process are closed at the end. docs/security.md, "Limits and timeouts", has the figures.
"""
import socket,subprocess,sys,time,os
binp, port = sys.argv[1], int(sys.argv[2])
p=subprocess.Popen([binp,"--ip","127.0.0.1","--port",str(port),"--api-port",str(port+1),"--default-target","http://127.0.0.1:9"],stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL)
def rss():
    for l in open(f"/proc/{p.pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1])//1024
for _ in range(100):
    try: socket.create_connection(("127.0.0.1",port)).close(); break
    except OSError: time.sleep(0.1)
time.sleep(0.5); base=rss()
conns=[]
blob=b"GET / HTTP/1.1\r\nHost: x\r\n"+ (b"X-Pad: "+b"a"*1000+b"\r\n")*880
refused=0
for i in range(100):
    s=socket.create_connection(("127.0.0.1",port)); s.settimeout(2)
    try: s.sendall(blob)
    except OSError: refused+=1
    conns.append(s)
time.sleep(1); held=rss()
print(f"{binp}: baseline {base} MiB, with 100x880KB unfinished heads {held} MiB (+{held-base}), sends cut short {refused}")
for s in conns: s.close()
p.terminate(); p.wait()
