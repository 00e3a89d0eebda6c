/* fd-table workload: one of each supported kind, then waits on stdin. argv[1]: a directory. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	char path[4096], line[256];
	int one = 1;

	snprintf(path, sizeof(path), "%s/log", argv[1]);
	int log = open(path, O_WRONLY | O_CREAT | O_APPEND, 0600);
	write(log, "abc", 3);
	int dir = open(argv[1], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int null = open("/dev/null", O_RDWR);
	dup2(null, 20);
	int p[2];
	pipe2(p, 0);
	write(p[1], "pipe-data", 9);
	fcntl(p[1], F_SETFL, O_NONBLOCK);
	int efd = eventfd(3, EFD_SEMAPHORE | EFD_CLOEXEC);
	int ep = epoll_create1(0);
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 0x1122334455667788ULL };
	epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev);
	ev.events = EPOLLIN | EPOLLET;
	ev.data.u64 = 42;
	epoll_ctl(ep, EPOLL_CTL_ADD, efd, &ev);

	int tcp = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	setsockopt(tcp, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	bind(tcp, (struct sockaddr *)&a, sizeof(a));
	listen(tcp, 33);
	socklen_t len = sizeof(a);
	getsockname(tcp, (struct sockaddr *)&a, &len);
	ev.events = EPOLLIN;
	ev.data.fd = tcp;
	epoll_ctl(ep, EPOLL_CTL_ADD, tcp, &ev);

	int udp = socket(AF_INET6, SOCK_DGRAM, 0);
	struct sockaddr_in6 a6 = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
	bind(udp, (struct sockaddr *)&a6, sizeof(a6));

	printf("ready %d %d %d %d %d %d %d %d\n", ntohs(a.sin_port), log, dir, p[0], p[1], efd, ep, tcp);
	fflush(stdout);
	while (fgets(line, sizeof(line), stdin))
		;
	return 0;
}
