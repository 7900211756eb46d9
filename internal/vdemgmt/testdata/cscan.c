/* cscan prints what glibc reads for the inputs of cscan_test.go: sscanf
   "%i %i", atoi, and vde_switch hash/find's sscanf. gcc -o cscan cscan.c */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
static void q(const char *s){ putchar('"'); for(;*s;s++){ if(*s=='"'||*s=='\\') printf("\\%c",*s); else if(*s=='\t') printf("\\t"); else if(*s=='\v') printf("\\v"); else if (*s=='\f') printf("\\f"); else if(*s=='\r') printf("\\r"); else putchar(*s);} putchar('"'); }
int main(){
  const char *in[]={"1 2","08 5","08","010 0x1F","0x10 -0x10","0b1 2","0o7 1","1_000 2","+5 -7"," \t 3\v\f\r 4","-","- 1","+ 1","0x 1","0xg 1","0X1f 2","2147483647 -2147483648","2147483648 1","4294967297 1","99999999999999999999 1","-99999999999999999999 1","12abc 3","1,2","019 1","0","","abc","  ","00x1 2","-08 3","07 08","1 2 3","0x7fffffffffffffff 1","0x8000000000000000 1","1e3 1",NULL};
  printf("// %%i %%i: rv a b\n");
  for(int i=0;in[i];i++){ int a=-999,b=-999; int rv=sscanf(in[i],"%i %i",&a,&b); printf("{"); q(in[i]); printf(", %d, %d, %d},\n",rv,a,b);}
  printf("// atoi\n");
  for(int i=0;in[i];i++){ printf("{"); q(in[i]); printf(", %d},\n",atoi(in[i]));}
  const char *m[]={"02:00:00:00:00:01","02:00:00:00:00:01 5","102:00:00:00:00:01","0x2:0:0:0:0:1"," 2: 3:4:5:6:7","2:3:4:5:6","2.3.4.5.6.7 9","-1:0:0:0:0:1","ffffffff:0:0:0:0:1","100000000:0:0:0:0:1","2:3:4:5:6:7junk","2:3:4:5:6:7 x","2:3:4:5:6:7 010","2:3:4:5:6:7 -3","+2:3:4:5:6:7","g:3:4:5:6:7","2::4:5:6:7","2:3:4:5:6:7:8","2.3.4.5.6.7:1", NULL};
  printf("// mac\n");
  for(int i=0;m[i];i++){ int x[6]={-1,-1,-1,-1,-1,-1}; int v=0; int rv; if(strchr(m[i],':')) rv=sscanf(m[i],"%x:%x:%x:%x:%x:%x %d",x,x+1,x+2,x+3,x+4,x+5,&v); else rv=sscanf(m[i],"%x.%x.%x.%x.%x.%x %d",x,x+1,x+2,x+3,x+4,x+5,&v); unsigned char b[6]; for(int j=0;j<6;j++) b[j]=x[j]; printf("{"); q(m[i]); printf(", %d, \"%02x:%02x:%02x:%02x:%02x:%02x\", %d},\n",rv,b[0],b[1],b[2],b[3],b[4],b[5],v);}
}
